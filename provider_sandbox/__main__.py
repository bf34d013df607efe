"""``python -m provider_sandbox``: run the provider sandboxes (see ``server.main``)."""

from provider_sandbox.server import main

raise SystemExit(main())
