"""One shape for API errors: DRF's field-keyed 400s, plus a JSON body for unexpected bad input."""

from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc, context):
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        code = getattr(exc, "default_code", None) or getattr(getattr(exc, "detail", None), "code", None)
        response.data = {"detail": str(response.data["detail"]), "code": code}
    return response
