"""ASGI entry point (uvicorn config.asgi:application): the ingest endpoint's own handler, Django for the rest."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from notifications.ingest.asgi import ingest_events_asgi, lifespan  # noqa: E402  (needs the app registry)


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/api/v1/events":
        await ingest_events_asgi(scope, receive, send)
        return
    await django_application(scope, receive, send)
