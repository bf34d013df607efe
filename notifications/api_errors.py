"""One shape for API errors: DRF's field-keyed 400s, `{"detail", "code"}` for the rest, also for an
address under `/api/` that matches no route (Django's 404 page is HTML)."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc, context):
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        code = getattr(exc, "default_code", None) or getattr(getattr(exc, "detail", None), "code", None)
        response.data = {"detail": str(response.data["detail"]), "code": code}
    return response


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """`handler404`: JSON under `/api/`, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)
    return page_not_found(request, exception)
