"""A database outage answers 503 + Retry-After on every page and endpoint, never a 500."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError, close_old_connections
from django.http import HttpRequest, HttpResponse, JsonResponse

log = logging.getLogger(__name__)

#: Seconds a client is asked to wait before retrying while the database is away.
RETRY_AFTER_SECONDS = 2


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        log.warning("database unavailable", extra={"path": request.path, "error": str(exception)[:200]})
        close_old_connections()  # the next request reconnects
        detail = "The service is temporarily unavailable (its database is away). Retry shortly."
        if request.path.startswith("/api/"):
            response: HttpResponse = JsonResponse({"detail": detail, "code": "unavailable"}, status=503)
        else:
            response = HttpResponse(detail, status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
