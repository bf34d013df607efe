"""The closed set of delivery channels."""

from django.db import models


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    PUSH = "push", "Push (FCM / APNs)"
    SMS = "sms", "SMS"
    INAPP = "inapp", "In-app"
    WEBHOOK = "webhook", "Webhook"


ALL_CHANNELS: tuple[str, ...] = tuple(Channel.values)
