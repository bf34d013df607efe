"""Serve the provider sandboxes (SendGrid, Twilio, FCM, APNs, webhook, SMTP) on loopback.

All arguments after the command are passed to `python -m provider_sandbox` (see
`provider_sandbox/README.md`), e.g. `manage.py run_sandbox_providers --sendgrid-rate 500`.
"""

import sys

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run local stand-ins for the providers that speak their real wire formats."

    def run_from_argv(self, argv):
        # Hand the sandbox its own flags untouched (Django's parser would reject them).
        from provider_sandbox.server import main

        code = main(argv[2:])
        if code:
            sys.stderr.write(f"sandbox exited with status {code}\n")
            sys.exit(code)

    def handle(self, *args, **options):  # pragma: no cover - run_from_argv does the work
        raise CommandError("use: manage.py run_sandbox_providers [sandbox flags]")
