"""The DLQ models, moved here from the `notifications` app: their state only, the tables stay as they are.

The tables were created by `notifications` 0007_dlq and keep their names (`Meta.db_table`);
`notifications` 0010 removes the models from that app's state and relabels their content types.
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("notifications", "0007_dlq"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="TriageRule",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("name", models.CharField(max_length=100, unique=True)),
                        ("priority", models.PositiveIntegerField(default=100, help_text="Lower is tried first.")),
                        ("enabled", models.BooleanField(default=True)),
                        (
                            "channel",
                            models.CharField(
                                blank=True,
                                choices=[
                                    ("email", "Email"),
                                    ("push", "Push"),
                                    ("sms", "SMS"),
                                    ("inapp", "In-app"),
                                    ("webhook", "Webhook"),
                                    ("events", "Events (dispatcher)"),
                                ],
                                max_length=10,
                            ),
                        ),
                        (
                            "provider",
                            models.CharField(blank=True, help_text="Provider name; empty for any.", max_length=50),
                        ),
                        (
                            "error_classes",
                            models.CharField(
                                blank=True,
                                help_text="DLQ error classes (error-class header), e.g. 'invalid_contact'.",
                                max_length=300,
                            ),
                        ),
                        (
                            "cause_classes",
                            models.CharField(
                                blank=True,
                                help_text="Class of the last error in the history, e.g. 'transient'.",
                                max_length=300,
                            ),
                        ),
                        (
                            "provider_codes",
                            models.CharField(
                                blank=True,
                                help_text="Provider error codes or HTTP statuses, e.g. '21211, http_401, 401'.",
                                max_length=300,
                            ),
                        ),
                        (
                            "message_pattern",
                            models.CharField(
                                blank=True,
                                help_text="Regular expression searched in the error message (case-insensitive).",
                                max_length=500,
                            ),
                        ),
                        (
                            "category",
                            models.CharField(
                                choices=[
                                    ("invalid_address", "Invalid address / dead token"),
                                    ("invalid_payload", "Invalid payload"),
                                    ("provider_auth", "Provider auth / configuration"),
                                    ("retries_exhausted", "Retries exhausted"),
                                    ("provider_outage", "Provider outage"),
                                    ("unknown", "Unknown (pages on-call)"),
                                ],
                                max_length=20,
                            ),
                        ),
                        ("description", models.TextField(blank=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                    ],
                    options={
                        "verbose_name": "DLQ triage rule",
                        "db_table": "notifications_triagerule",
                        "ordering": ["priority", "id"],
                    },
                ),
                migrations.CreateModel(
                    name="DlqAudit",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "action",
                            models.CharField(
                                choices=[
                                    ("replay", "Replay"),
                                    ("discard", "Discard"),
                                    ("drain", "Drain parked messages"),
                                    ("recategorise", "Re-apply triage rules"),
                                ],
                                max_length=15,
                            ),
                        ),
                        ("actor_name", models.CharField(help_text="Kept if the user is deleted.", max_length=150)),
                        ("at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("finished_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "requested",
                            models.PositiveIntegerField(
                                default=0, help_text="Entries selected when the action was confirmed."
                            ),
                        ),
                        ("count", models.PositiveIntegerField(default=0, help_text="Entries acted upon.")),
                        (
                            "skipped",
                            models.PositiveIntegerField(
                                default=0, help_text="Selected, but not acted upon (already replayed, …)."
                            ),
                        ),
                        ("reason", models.CharField(blank=True, max_length=500)),
                        (
                            "selection",
                            models.TextField(blank=True, help_text="The filter or selection the action ran on."),
                        ),
                        (
                            "actor",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "verbose_name": "DLQ audit entry",
                        "verbose_name_plural": "DLQ audit",
                        "db_table": "notifications_dlqaudit",
                        "ordering": ["-at"],
                    },
                ),
                migrations.CreateModel(
                    name="DeadLetter",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("message_id", models.CharField(max_length=255, unique=True)),
                        (
                            "channel",
                            models.CharField(
                                choices=[
                                    ("email", "Email"),
                                    ("push", "Push"),
                                    ("sms", "SMS"),
                                    ("inapp", "In-app"),
                                    ("webhook", "Webhook"),
                                    ("events", "Events (dispatcher)"),
                                ],
                                max_length=10,
                            ),
                        ),
                        ("provider", models.CharField(blank=True, max_length=50)),
                        (
                            "recipient",
                            models.CharField(
                                blank=True, help_text="Address, phone, device token, URL or user id.", max_length=500
                            ),
                        ),
                        ("user_id", models.BigIntegerField(blank=True, null=True)),
                        ("event_id", models.CharField(blank=True, max_length=100)),
                        ("event_type", models.CharField(blank=True, max_length=100)),
                        ("dlq_topic", models.CharField(max_length=249)),
                        ("dlq_partition", models.IntegerField()),
                        ("dlq_offset", models.BigIntegerField()),
                        ("origin_topic", models.CharField(blank=True, max_length=249)),
                        ("message_key", models.CharField(blank=True, max_length=255)),
                        ("payload", models.JSONField(blank=True, help_text="The original message (JSON).", null=True)),
                        (
                            "raw_payload",
                            models.TextField(blank=True, help_text="The original bytes, when they were not JSON."),
                        ),
                        ("headers", models.JSONField(blank=True, default=dict)),
                        ("error_class", models.CharField(blank=True, max_length=50)),
                        (
                            "cause_class",
                            models.CharField(
                                blank=True, help_text="Class of the last error in the history.", max_length=50
                            ),
                        ),
                        (
                            "error_code",
                            models.CharField(
                                blank=True, help_text="Provider error code of the last error.", max_length=100
                            ),
                        ),
                        ("error_message", models.TextField(blank=True)),
                        (
                            "errors",
                            models.JSONField(blank=True, default=list, help_text="Full error history, oldest first."),
                        ),
                        ("attempts", models.PositiveIntegerField(default=0)),
                        ("first_failed_at", models.DateTimeField()),
                        ("last_failed_at", models.DateTimeField()),
                        (
                            "category",
                            models.CharField(
                                choices=[
                                    ("invalid_address", "Invalid address / dead token"),
                                    ("invalid_payload", "Invalid payload"),
                                    ("provider_auth", "Provider auth / configuration"),
                                    ("retries_exhausted", "Retries exhausted"),
                                    ("provider_outage", "Provider outage"),
                                    ("unknown", "Unknown (pages on-call)"),
                                ],
                                default="unknown",
                                max_length=20,
                            ),
                        ),
                        ("fingerprint", models.CharField(max_length=32)),
                        (
                            "status",
                            models.CharField(
                                choices=[("open", "Open"), ("replayed", "Replayed"), ("discarded", "Discarded")],
                                default="open",
                                max_length=10,
                            ),
                        ),
                        (
                            "failure_count",
                            models.PositiveIntegerField(default=1, help_text="Times this message was dead-lettered."),
                        ),
                        ("replay_count", models.PositiveIntegerField(default=0)),
                        ("replayed_at", models.DateTimeField(blank=True, null=True)),
                        ("discarded_reason", models.CharField(blank=True, max_length=500)),
                        ("page_pending", models.BooleanField(default=False)),
                        (
                            "paged_at",
                            models.DateTimeField(
                                blank=True, help_text="Set on the entry whose arrival paged on-call.", null=True
                            ),
                        ),
                        ("stored_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("updated_at", models.DateTimeField(default=django.utils.timezone.now)),
                        (
                            "last_audit",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="dlq.dlqaudit",
                            ),
                        ),
                        (
                            "rule",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="dlq.triagerule",
                            ),
                        ),
                    ],
                    options={
                        "verbose_name": "dead letter",
                        "db_table": "notifications_deadletter",
                        "permissions": [
                            ("replay_deadletter", "Can replay dead letters"),
                            ("discard_deadletter", "Can discard dead letters"),
                        ],
                    },
                ),
                migrations.AddIndex(
                    model_name="dlqaudit",
                    index=models.Index(fields=["-at"], name="dlqaudit_at"),
                ),
                migrations.AddIndex(
                    model_name="deadletter",
                    index=models.Index(fields=["status", "-last_failed_at"], name="deadletter_status"),
                ),
                migrations.AddIndex(
                    model_name="deadletter",
                    index=models.Index(fields=["category", "status"], name="deadletter_category"),
                ),
                migrations.AddIndex(
                    model_name="deadletter",
                    index=models.Index(fields=["fingerprint"], name="deadletter_fingerprint"),
                ),
                migrations.AddIndex(
                    model_name="deadletter",
                    index=models.Index(fields=["-last_failed_at"], name="deadletter_last_failed"),
                ),
                migrations.AddIndex(
                    model_name="deadletter",
                    index=models.Index(fields=["recipient"], name="deadletter_recipient"),
                ),
                migrations.AddIndex(
                    model_name="deadletter",
                    index=models.Index(fields=["event_id"], name="deadletter_event"),
                ),
                migrations.AddIndex(
                    model_name="deadletter",
                    index=models.Index(fields=["user_id"], name="deadletter_user"),
                ),
                migrations.AddIndex(
                    model_name="deadletter",
                    index=models.Index(
                        condition=models.Q(("page_pending", True)),
                        fields=["fingerprint"],
                        name="deadletter_page_pending",
                    ),
                ),
            ],
        ),
    ]
