"""Development data: a superuser, a known API key, demo notification types. Never for production."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from notifications.dev_data import DEV_API_KEY, DEV_PASSWORD, DEV_USERNAME, bootstrap_dev_data


class Command(BaseCommand):
    help = "Create the development superuser, API key and demo data (refuses to run with DEBUG off unless --force)."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="Run even when DJANGO_DEBUG is off.")

    def handle(self, *args, force: bool, **options):
        if not (settings.DEBUG or force):
            raise CommandError("bootstrap_dev creates well-known credentials; set DJANGO_DEBUG=1 or pass --force")
        summary = bootstrap_dev_data()
        self.stdout.write(self.style.WARNING("Development only — these credentials are public:"))
        self.stdout.write(f"  admin:   http://127.0.0.1:8000/admin/  user {DEV_USERNAME!r} password {DEV_PASSWORD!r}")
        self.stdout.write(f"  API key: {DEV_API_KEY}")
        self.stdout.write(f"  demo:    {summary}")
