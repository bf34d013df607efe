"""``python -m notifications.sandbox``: run the provider sandboxes (see ``server.main``)."""

from notifications.sandbox.server import main

raise SystemExit(main())
