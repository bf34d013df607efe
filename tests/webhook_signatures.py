"""Checking a webhook sandbox record's Standard Webhooks signature, for the webhook tests."""

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def verifies(record: dict, secret: str) -> bool:
    """Whether the request the sandbox recorded carries a valid signature made with `secret`."""
    headers = {
        "webhook-id": record["idempotency_key"],
        "webhook-timestamp": record["meta"]["webhook-timestamp"],
        "webhook-signature": record["meta"]["webhook-signature"],
    }
    try:
        Webhook(secret).verify(record["raw"], headers)
    except WebhookVerificationError:
        return False
    return True
