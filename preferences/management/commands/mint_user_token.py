"""Print an end-user token (HS256 JWT) for a recipient, signed with an API key's token secret.

For development and support; in production the producer's backend signs its own tokens.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from notifications.models import ApiKey
from preferences.models import EXTERNAL_ID
from preferences.user_tokens import SCOPES, mint_user_token


class Command(BaseCommand):
    help = "Print a signed end-user token (JWT) for the recipient with the given external id."

    def add_arguments(self, parser):
        parser.add_argument("external_id", help="The recipient's external id (the token's 'sub').")
        parser.add_argument("--key", required=True, help="The prefix of the API key whose secret signs the token.")
        parser.add_argument("--ttl", type=int, default=None, help="Lifetime in seconds (default 3600, at most 86400).")
        parser.add_argument(
            "--scope", default=None, help=f"Space-separated, any of: {' '.join(SCOPES)} (default: all)."
        )

    def handle(self, *args, external_id: str, key: str, ttl: int | None, scope: str | None, **options):
        if EXTERNAL_ID.fullmatch(external_id) is None:
            raise CommandError(f"{external_id!r} is not an external id (1 to 255 characters, no spaces, '/?#').")
        if ttl is not None and not 0 < ttl <= settings.USER_TOKEN_MAX_TTL_SECONDS:
            raise CommandError(f"--ttl must be between 1 and {settings.USER_TOKEN_MAX_TTL_SECONDS} seconds.")
        unknown = set((scope or "").split()) - set(SCOPES)
        if unknown:
            raise CommandError(f"unknown scope(s): {', '.join(sorted(unknown))} (use: {' '.join(SCOPES)}).")
        api_key = ApiKey.objects.filter(prefix=key).first()
        if api_key is None or not api_key.is_active:
            raise CommandError(f"no active API key with prefix {key!r}.")
        self.stdout.write(mint_user_token(api_key=api_key, subject=external_id, ttl_seconds=ttl, scope=scope))
