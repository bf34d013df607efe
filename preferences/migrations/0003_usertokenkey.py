import django.db.models.deletion
from django.db import migrations, models

import preferences.models


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0010_dlq_models_moved_to_dlq_app"),
        ("preferences", "0002_recipient_external_id"),
    ]

    operations = [
        migrations.CreateModel(
            name="UserTokenKey",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "hs256_secret",
                    models.CharField(
                        editable=False,
                        help_text="Shared with the producer's backend, which signs with it.",
                        max_length=100,
                    ),
                ),
                (
                    "rs256_public_key",
                    models.TextField(
                        blank=True,
                        validators=[preferences.models.validate_rs256_public_key],
                        help_text="PEM public key; when set, RS256 tokens signed with its private key are accepted too.",
                    ),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "api_key",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="user_token_key",
                        to="notifications.apikey",
                    ),
                ),
            ],
            options={"verbose_name": "end-user token key"},
        ),
    ]
