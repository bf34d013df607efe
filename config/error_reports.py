"""Django's error reports (DEBUG error pages, error e-mails to ADMINS) with every credential setting hidden."""

import re

from django.views.debug import SafeExceptionReporterFilter


class CredentialFilter(SafeExceptionReporterFilter):
    """Django hides settings named like API, KEY, TOKEN, SECRET, PASS…; ours also carry credentials in
    URLs (REDIS_URL with a password, a chat webhook's DLQ_PAGE_WEBHOOK_URL) and in JSON
    (FCM_SERVICE_ACCOUNT_JSON holds a private key)."""

    hidden_settings = re.compile("API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|JSON", flags=re.IGNORECASE)
