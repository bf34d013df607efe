"""Django project package: settings, URL routes and the WSGI/ASGI entry points."""
