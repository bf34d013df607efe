"""`/metrics` for the web process (Prometheus text format, this process's registry), not public.

With `METRICS_TOKEN` set, a scrape sends `Authorization: Bearer <token>`; anything else is a 401. Without
it, only loopback clients are served (403 otherwise). Why, and the reverse-proxy caveat:
`docs/architecture.md`, "API security".
"""

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def scrape_allowed(request: HttpRequest) -> HttpResponse | None:
    """None when the request may read the metrics, else the 401/403 to answer."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        response = JsonResponse(
            {"detail": "A valid metrics token is required.", "code": "not_authenticated"}, status=401
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if _is_loopback(request.META.get("REMOTE_ADDR", "")):
        return None
    return JsonResponse(
        {"detail": "Metrics are served to loopback only (METRICS_TOKEN is not set).", "code": "permission_denied"},
        status=403,
    )


def metrics_view(request: HttpRequest) -> HttpResponse:
    refused = scrape_allowed(request)
    if refused is not None:
        return refused
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
