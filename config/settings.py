"""Settings for the notification platform, read from the environment with django-environ.

Every value that differs between a laptop, CI and production comes from an environment
variable (see `.env.example`); the defaults point at the services `platform/services up` starts.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

SECRET_KEY = env("DJANGO_SECRET_KEY", default="dev-insecure-change-me-in-production-0123456789abcdef")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "notifications",
    "notifications.dlq",
    "notifications.webhooks",
    "preferences",
    "campaigns",
    "subscriptions",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "notifications.middleware.DatabaseUnavailableMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default="postgres://notif:notif@127.0.0.1:55432/notifications"),
}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = True
# Translations of the pages end users see (the hosted preference centre), by the recipient's locale.
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(BASE_DIR / ".platform" / "static")))
WHITENOISE_AUTOREFRESH = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Redis ------------------------------------------------------------------------------------
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:56379/0")
REDIS_KEY_PREFIX = env("REDIS_KEY_PREFIX", default="notif:")
# Short socket timeouts: a hung Redis must trip the circuit breakers quickly, not stall a batch.
REDIS_SOCKET_TIMEOUT = env.float("REDIS_SOCKET_TIMEOUT", default=0.5)

# --- Kafka ------------------------------------------------------------------------------------
KAFKA_BOOTSTRAP_SERVERS = env("KAFKA_BOOTSTRAP_SERVERS", default="127.0.0.1:59092")
# Every topic name is prefixed, so test runs and tenants can share one cluster without colliding.
KAFKA_TOPIC_PREFIX = env("KAFKA_TOPIC_PREFIX", default="")
# Partitions per topic; production raises this to the consumer parallelism it plans for.
KAFKA_DEFAULT_PARTITIONS = env.int("KAFKA_DEFAULT_PARTITIONS", default=6)
# Copies of every topic: 1 on the local single broker, 3 on a cluster (`platform/services --cluster`).
KAFKA_REPLICATION_FACTOR = env.int("KAFKA_REPLICATION_FACTOR", default=1)
# Replicas that must have a write before an acks=all producer gets its acknowledgement (a topic
# setting, so it holds whatever the brokers' default). Unset: 2 from 3 replicas up, else 1.
KAFKA_MIN_INSYNC_REPLICAS = env.int("KAFKA_MIN_INSYNC_REPLICAS", default=None)
KAFKA_CONSUMER_GROUP_PREFIX = env("KAFKA_CONSUMER_GROUP_PREFIX", default="notif")
# A consumer that stops heartbeating loses its partitions after this long (the broker accepts 6 s
# and up): a dead worker's partitions move within seconds.
KAFKA_SESSION_TIMEOUT_MS = env.int("KAFKA_SESSION_TIMEOUT_MS", default=6000)
KAFKA_HEARTBEAT_INTERVAL_MS = env.int("KAFKA_HEARTBEAT_INTERVAL_MS", default=1500)
# Static group membership: a stable name per consumer process (e.g. its replica ordinal), so a
# restarted process takes its own partitions back without a rebalance. Unique per role and group;
# empty: dynamic membership. Set per process by `run_consumer --instance`.
CONSUMER_INSTANCE = env("CONSUMER_INSTANCE", default="")

# --- Outbox relay -----------------------------------------------------------------------------
# Rows are spread over this many key buckets; relays own buckets through advisory locks.
# Changing it reshuffles keys between buckets, so drain the outbox before changing it.
OUTBOX_BUCKETS = env.int("OUTBOX_BUCKETS", default=64)
OUTBOX_BATCH_SIZE = env.int("OUTBOX_BATCH_SIZE", default=2000)
# Bulk-lane rows a relay batch takes at most (after every waiting priority row): the batch a
# priority row committed meanwhile may have to wait for.
OUTBOX_BULK_BATCH_SIZE = env.int("OUTBOX_BULK_BATCH_SIZE", default=500)
# Fallback poll when no NOTIFY arrives (a NOTIFY can be missed while a relay reconnects).
OUTBOX_POLL_INTERVAL = env.float("OUTBOX_POLL_INTERVAL", default=1.0)

# --- Ingest API -------------------------------------------------------------------------------
INGEST_MAX_BATCH = env.int("INGEST_MAX_BATCH", default=500)
INGEST_MAX_RECIPIENTS = env.int("INGEST_MAX_RECIPIENTS", default=1000)
INGEST_MAX_DATA_BYTES = env.int("INGEST_MAX_DATA_BYTES", default=64 * 1024)
# How much lower the CPU priority (nice) of the web process's bulk-lane ingest process (and bulk-commit thread) is.
INGEST_BULK_NICE = env.int("INGEST_BULK_NICE", default=10)
# A niced process's PostgreSQL sessions get its nice value when the server is on this host and ours.
DATABASE_SESSIONS_FOLLOW_NICE = env.bool("DATABASE_SESSIONS_FOLLOW_NICE", default=True)
# --- Identify API (/api/v1/recipients) and inline recipients in events -------------------------
RECIPIENTS_BULK_MAX = env.int("RECIPIENTS_BULK_MAX", default=1000)
RECIPIENT_MAX_ATTRIBUTES_BYTES = env.int("RECIPIENT_MAX_ATTRIBUTES_BYTES", default=16 * 1024)
# End-user tokens (JWT, `Authorization: Bearer`): the lifetime `manage.py mint_user_token` gives, the
# longest lifetime honoured after a token's `iat`, and the clock skew tolerated.
USER_TOKEN_DEFAULT_TTL_SECONDS = env.int("USER_TOKEN_DEFAULT_TTL_SECONDS", default=3600)
USER_TOKEN_MAX_TTL_SECONDS = env.int("USER_TOKEN_MAX_TTL_SECONDS", default=24 * 3600)
USER_TOKEN_LEEWAY_SECONDS = env.int("USER_TOKEN_LEEWAY_SECONDS", default=30)
# API keys are verified from a per-process cache: a revocation or a quota change applies within this.
API_KEY_CACHE_SECONDS = env.float("API_KEY_CACHE_SECONDS", default=5.0)
# Load shedding (503 + Retry-After): when the ingest's commits take longer than this (smoothed), or
# the outbox's oldest unrelayed event is older than this (the relay or Kafka cannot keep up).
INGEST_MAX_COMMIT_SECONDS = env.float("INGEST_MAX_COMMIT_SECONDS", default=2.0)
INGEST_MAX_OUTBOX_AGE = env.float("INGEST_MAX_OUTBOX_AGE", default=120.0)
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=16 * 1024 * 1024)

# --- Metrics ----------------------------------------------------------------------------------
# Each long-running command serves /metrics on its own port: --metrics-port, else METRICS_PORT, else
# the role's port in the consumer registry (notifications/bus/consumers.py); 0 disables it (tests).
METRICS_PORT = env.int("METRICS_PORT", default=None)
# Address the /metrics servers listen on: loopback by default (nothing leaves the machine); 0.0.0.0
# (or the pod's address) where Prometheus scrapes from elsewhere. /metrics has no authentication, so
# expose it only on a network that only the scraper reaches.
METRICS_BIND = env("METRICS_BIND", default="127.0.0.1")
# The same server answers /healthz and /readyz: the role's loop counts as stalled (503) when its last
# turn is older than this many seconds (a turn is one batch, or one outage backoff of at most 5 s).
PROCESS_LOOP_STALL_SECONDS = env.float("PROCESS_LOOP_STALL_SECONDS", default=60.0)

# --- Delivery log partitions (docs/architecture.md, "Delivery log") ------------------------------
# Daily partitions older than this many days are dropped (with their rows) by the maintenance.
DELIVERY_LOG_RETENTION_DAYS = env.int("DELIVERY_LOG_RETENTION_DAYS", default=30)
# Daily partitions created ahead of today, so a missed maintenance run never stops the writers.
DELIVERY_LOG_PARTITIONS_AHEAD = env.int("DELIVERY_LOG_PARTITIONS_AHEAD", default=7)

# --- Retention of the other tables that grow with traffic (docs/architecture.md, "Bounded tables") --
# Accepted events are forgotten after this many days: a repeat of an event_id within it is a
# duplicate, after it a new event. 0 keeps them for good.
ACCEPTED_EVENT_RETENTION_DAYS = env.int("ACCEPTED_EVENT_RETENTION_DAYS", default=30)
# Replayed and discarded dead letters are deleted this many days after their last change; open ones
# never are. 0 keeps them for good.
DLQ_RESOLVED_RETENTION_DAYS = env.int("DLQ_RESOLVED_RETENTION_DAYS", default=30)
# In-app inbox messages are deleted this many days after they arrived. 0 keeps them for good.
INBOX_RETENTION_DAYS = env.int("INBOX_RETENTION_DAYS", default=90)
# Fanout runs (campaigns of kind fanout) are deleted this many days after they completed, were
# cancelled or failed; marketers' campaigns are never. 0 keeps them for good.
FANOUT_RETENTION_DAYS = env.int("FANOUT_RETENTION_DAYS", default=30)

# The web process's /metrics (on the public port) wants `Authorization: Bearer <METRICS_TOKEN>`; unset,
# it answers loopback clients only (behind a proxy on the same host: set a token).
METRICS_TOKEN = env("METRICS_TOKEN", default="")

REST_FRAMEWORK = {
    # The first class names the scheme of a 401's WWW-Authenticate (a session has none: DRF would
    # answer 403 to missing credentials).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "notifications.api_errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Notification platform API",
    "DESCRIPTION": (
        "Producers publish events (202 Accepted, delivered asynchronously through a transactional "
        "outbox and Kafka); end users manage their preferences, devices and in-app inbox."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "notifications.api_schema.add_standard_responses",
        "preferences.openapi.describe_recipients",
        "notifications.ingest.schema.describe_ingest",
        "preferences.openapi.describe_preferences",
        "subscriptions.openapi.describe_topics",
    ],
}

# Settings that hold credentials are hidden from DEBUG error pages and error e-mails (config/error_reports.py).
DEFAULT_EXCEPTION_REPORTER_FILTER = "config.error_reports.CredentialFilter"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "notifications.log_format.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json"},
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # One INFO line per request, with full URLs (webhook URLs may carry tokens): keep it quiet.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # HTTP/2 (APNs) header coding at DEBUG prints every header block, the authorization header in it.
        "hpack": {"level": "WARNING"},
    },
}

# --- Priority lanes (docs/architecture.md, "Priority lanes") -----------------------------------
# Bulk traffic (marketing, digests, campaigns) travels in its own lane per channel and for events;
# off: one FIFO lane for everything (only for comparing, as the spike benchmark's baseline does).
PRIORITY_LANES = env.bool("PRIORITY_LANES", default=True)
# Bulk messages a worker holds at most (polled, not yet settled): this many seconds of the channel's
# contract rate, at least WORKER_BULK_MIN_IN_FLIGHT, at most half of WORKER_CONCURRENCY.
WORKER_BULK_LEAD_SECONDS = env.float("WORKER_BULK_LEAD_SECONDS", default=0.5)
WORKER_BULK_MIN_IN_FLIGHT = env.int("WORKER_BULK_MIN_IN_FLIGHT", default=20)

# --- Delivery workers ---------------------------------------------------------------------------
WORKER_BATCH_SIZE = env.int("WORKER_BATCH_SIZE", default=500)
# Sends in flight per worker process: at 100 ms provider latency, 200 in flight ≈ 2,000 sends/s.
WORKER_CONCURRENCY = env.int("WORKER_CONCURRENCY", default=200)
WORKER_IN_PROCESS_RETRIES = env.int("WORKER_IN_PROCESS_RETRIES", default=2)
# While Redis (dedup, token buckets) is unreachable for less than this many seconds, a worker holds
# the messages in hand and sends them as soon as it answers; only a longer outage parks them in retry
# tiers (bucket) or sends them without a claim (dedup, counted). 0: no holding.
WORKER_REDIS_HOLD_SECONDS = env.float("WORKER_REDIS_HOLD_SECONDS", default=30.0)
# A worker's liveness keys (one per dedup shard) live this long and are refreshed this often from its
# event loop; a claim whose owner's key is gone passes to the next worker that reads the message.
WORKER_LIVENESS_TTL = env.float("WORKER_LIVENESS_TTL", default=3.0)
WORKER_LIVENESS_INTERVAL = env.float("WORKER_LIVENESS_INTERVAL", default=1.0)
# Provider HTTP timeout (s); the dedup lease is derived from it so a claim outlives the send.
PROVIDER_TIMEOUT = env.float("PROVIDER_TIMEOUT", default=10.0)
DEDUP_SENT_TTL = env.float("DEDUP_SENT_TTL", default=24 * 3600)
RETRY_MAX_ATTEMPTS = env.int("RETRY_MAX_ATTEMPTS", default=8)
RETRY_MAX_AGE = env.float("RETRY_MAX_AGE", default=24 * 3600)
RETRY_BASE_DELAY = env.float("RETRY_BASE_DELAY", default=0.5)
RETRY_MAX_DELAY = env.float("RETRY_MAX_DELAY", default=600)
RETRY_IN_PROCESS_THRESHOLD = env.float("RETRY_IN_PROCESS_THRESHOLD", default=2.0)
# Provider send slots are booked (1 + margin) / R apart and a send that starts more than `margin`
# seconds after its slot books again, so a provider enforcing exactly R per second never sees more
# than R in a 1 s window (the margin absorbs slot-to-arrival jitter). Utilisation <= 1 / (1 + margin).
RATE_LIMIT_WINDOW_MARGIN = env.float("RATE_LIMIT_WINDOW_MARGIN", default=0.02)
# Sockets per provider pool: at least WORKER_CONCURRENCY, so sends never queue for a connection.
TWILIO_MAX_CONNECTIONS = env.int("TWILIO_MAX_CONNECTIONS", default=max(200, WORKER_CONCURRENCY))
FCM_MAX_CONNECTIONS = env.int("FCM_MAX_CONNECTIONS", default=max(200, WORKER_CONCURRENCY))
WEBHOOK_MAX_CONNECTIONS = env.int("WEBHOOK_MAX_CONNECTIONS", default=max(200, WORKER_CONCURRENCY))
# APNs multiplexes many streams per HTTP/2 connection; SMTP sends block one thread + socket each.
APNS_MAX_CONNECTIONS = env.int("APNS_MAX_CONNECTIONS", default=4)
# APNs pushes a worker has on the wire at once (at most 100: the streams of the one HTTP/2 connection
# httpcore uses); more wait in the worker, before the send deadline starts.
APNS_MAX_IN_FLIGHT = env.int("APNS_MAX_IN_FLIGHT", default=32)
# Longer than PROVIDER_TIMEOUT: a push answered late on the shared HTTP/2 connection must not be
# retried (APNs has no idempotency key), and the push worker's dedup lease is sized on it.
APNS_TIMEOUT = env.float("APNS_TIMEOUT", default=30.0)
SMTP_MAX_CONNECTIONS = env.int("SMTP_MAX_CONNECTIONS", default=16)
SENDGRID_MAX_CONNECTIONS = env.int("SENDGRID_MAX_CONNECTIONS", default=200)
# Threads of the anymail adapter (django-anymail's backends block).
EMAIL_SEND_THREADS = env.int("EMAIL_SEND_THREADS", default=100)
WEBHOOK_MAX_PER_HOST = env.int("WEBHOOK_MAX_PER_HOST", default=100)
# Per-provider request timeouts (s); unset: PROVIDER_TIMEOUT. Dedup leases follow the longest per channel.
EMAIL_SEND_TIMEOUT = env.float("EMAIL_SEND_TIMEOUT", default=None)
SMTP_TIMEOUT = env.float("SMTP_TIMEOUT", default=None)
TWILIO_TIMEOUT = env.float("TWILIO_TIMEOUT", default=None)
FCM_TIMEOUT = env.float("FCM_TIMEOUT", default=None)
WEBHOOK_TIMEOUT = env.float("WEBHOOK_TIMEOUT", default=None)
# Bound on one whole send (token exchange and retries included); unset: the provider's own timeout.
PROVIDER_SEND_DEADLINE = env.float("PROVIDER_SEND_DEADLINE", default=None)
# In-app: rows per insert, how long a partial batch waits (ms), writer threads per worker.
INAPP_BATCH_SIZE = env.int("INAPP_BATCH_SIZE", default=500)
INAPP_BATCH_WINDOW_MS = env.float("INAPP_BATCH_WINDOW_MS", default=5.0)
INAPP_WRITER_THREADS = env.int("INAPP_WRITER_THREADS", default=2)
PROVIDER_BREAKER_FAILURES = env.int("PROVIDER_BREAKER_FAILURES", default=5)
PROVIDER_BREAKER_COOL_DOWN = env.float("PROVIDER_BREAKER_COOL_DOWN", default=30.0)

# --- Providers ----------------------------------------------------------------------------------
# The real providers unless the environment says otherwise. Development points every adapter at the
# local provider sandboxes with `platform/sandbox.env` (make dev exports it; the tests read it).
# The adapter kind per channel: email is sendgrid, smtp or anymail (any ESP django-anymail supports).
# From the environment as `email=smtp,sms=twilio`; channels not named keep these.
NOTIFICATION_PROVIDERS = env.dict(
    "NOTIFICATION_PROVIDERS",
    default={"email": "sendgrid", "sms": "twilio", "push": "push", "inapp": "inapp", "webhook": "webhook"},
)
NOTIFICATIONS_FROM_EMAIL = env("NOTIFICATIONS_FROM_EMAIL", default="Notifications <notifications@example.com>")
DEFAULT_FROM_EMAIL = NOTIFICATIONS_FROM_EMAIL
# Django's mail backend (DLQ paging e-mails); an `anymail.` backend is also the ESP of the anymail kind
# unless ANYMAIL_EMAIL_BACKEND names another.
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")
ANYMAIL_EMAIL_BACKEND = env("ANYMAIL_EMAIL_BACKEND", default="")
# django-anymail's settings: SendGrid's, plus any other ESP's as `MAILGUN_API_KEY=…,MAILGUN_SENDER_DOMAIN=…`.
ANYMAIL = {
    **env.dict("ANYMAIL_ESP_SETTINGS", default={}),
    "SENDGRID_API_KEY": env("SENDGRID_API_KEY", default=""),
    "SENDGRID_API_URL": env("SENDGRID_API_URL", default="https://api.sendgrid.com/v3/"),
}
SMTP_HOST = env("SMTP_HOST", default="127.0.0.1")
SMTP_PORT = env.int("SMTP_PORT", default=25)
SMTP_USERNAME = env("SMTP_USERNAME", default="")
SMTP_PASSWORD = env("SMTP_PASSWORD", default="")
# STARTTLS on a plain connection (port 587), or TLS from the first byte (port 465): at most one.
SMTP_USE_TLS = env.bool("SMTP_USE_TLS", default=False)
SMTP_USE_SSL = env.bool("SMTP_USE_SSL", default=False)
if SMTP_USE_TLS and SMTP_USE_SSL:
    raise ImproperlyConfigured(
        "SMTP_USE_TLS and SMTP_USE_SSL are exclusive: STARTTLS (587) or TLS from the start (465)"
    )
TWILIO_BASE_URL = env("TWILIO_BASE_URL", default="https://api.twilio.com")
TWILIO_ACCOUNT_SID = env("TWILIO_ACCOUNT_SID", default="")
TWILIO_AUTH_TOKEN = env("TWILIO_AUTH_TOKEN", default="")
# An API key (SID + secret) instead of the account's auth token, when set.
TWILIO_API_KEY_SID = env("TWILIO_API_KEY_SID", default="")
TWILIO_API_KEY_SECRET = env("TWILIO_API_KEY_SECRET", default="")
TWILIO_FROM_NUMBER = env("TWILIO_FROM_NUMBER", default="")
TWILIO_MESSAGING_SERVICE_SID = env("TWILIO_MESSAGING_SERVICE_SID", default="")
TWILIO_STATUS_CALLBACK_URL = env("TWILIO_STATUS_CALLBACK_URL", default="")
FCM_BASE_URL = env("FCM_BASE_URL", default="https://fcm.googleapis.com")
FCM_PROJECT_ID = env("FCM_PROJECT_ID", default="")
# The service account as a file path, or its JSON itself (wins when both are set).
FCM_SERVICE_ACCOUNT_FILE = env("FCM_SERVICE_ACCOUNT_FILE", default="")
FCM_SERVICE_ACCOUNT_JSON = env("FCM_SERVICE_ACCOUNT_JSON", default="")
APNS_BASE_URL = env("APNS_BASE_URL", default="https://api.push.apple.com")
# The .p8 signing key as a file path, or its PEM text itself.
APNS_KEY_FILE = env("APNS_KEY_FILE", default="")
APNS_KEY = env("APNS_KEY", default="")
APNS_KEY_ID = env("APNS_KEY_ID", default="")
APNS_TEAM_ID = env("APNS_TEAM_ID", default="")
APNS_TOPIC = env("APNS_TOPIC", default="")
# Age at which the APNs provider token is re-signed (clamped to 20-50 min: Apple refuses faster or older).
APNS_TOKEN_REFRESH_SECONDS = env.float("APNS_TOKEN_REFRESH_SECONDS", default=2400.0)
# Signs webhooks to endpoints without a registered secret of their own (admin: Webhooks > Webhook endpoints).
WEBHOOK_SIGNING_SECRET = env("WEBHOOK_SIGNING_SECRET", default="")
# Per-endpoint back-pressure (docs/architecture.md, "Webhooks"): registered endpoints are re-read
# every WEBHOOK_ENDPOINT_REFRESH_SECONDS; an endpoint failing (5xx, timeouts) this many times in a row
# is paused alone, first for WEBHOOK_ENDPOINT_FAILURE_PAUSE seconds, doubling, and no pause (nor a
# receiver's Retry-After) lasts longer than WEBHOOK_ENDPOINT_MAX_PAUSE.
WEBHOOK_ENDPOINT_REFRESH_SECONDS = env.float("WEBHOOK_ENDPOINT_REFRESH_SECONDS", default=5.0)
WEBHOOK_ENDPOINT_FAILURE_THRESHOLD = env.int("WEBHOOK_ENDPOINT_FAILURE_THRESHOLD", default=5)
WEBHOOK_ENDPOINT_FAILURE_PAUSE = env.float("WEBHOOK_ENDPOINT_FAILURE_PAUSE", default=5.0)
WEBHOOK_ENDPOINT_MAX_PAUSE = env.float("WEBHOOK_ENDPOINT_MAX_PAUSE", default=3600.0)
PUBLIC_BASE_URL = env("PUBLIC_BASE_URL", default="http://127.0.0.1:8000")

# --- Preferences ------------------------------------------------------------------------------
# Cached preference documents live this long in Redis (s): the staleness bound should an invalidation be lost.
PREFERENCES_CACHE_TTL = env.int("PREFERENCES_CACHE_TTL", default=3600)
# Active devices per user; registering one more retires the least recently seen.
PREFERENCES_MAX_DEVICES_PER_USER = env.int("PREFERENCES_MAX_DEVICES_PER_USER", default=20)
# One-click unsubscribe links in e-mails stay valid this long (s; 30 days).
UNSUBSCRIBE_MAX_AGE = env.int("UNSUBSCRIBE_MAX_AGE", default=30 * 24 * 3600)

# --- DLQ triage ---------------------------------------------------------------------------------
# Pages (only for entries no rule recognises) go to a webhook and/or on-call email addresses, at
# most once per fingerprint per window; an ERROR log line and a metric are always emitted.
DLQ_PAGE_WEBHOOK_URL = env("DLQ_PAGE_WEBHOOK_URL", default="")
DLQ_PAGE_EMAILS = env.list("DLQ_PAGE_EMAILS", default=[])
DLQ_PAGE_WINDOW_SECONDS = env.int("DLQ_PAGE_WINDOW_SECONDS", default=3600)

# --- Campaigns (see docs/operations.md, "Campaigns") --------------------------------------------
# Orchestrator: users per page = per batch message (10k-50k; at most 50k, Kafka's 1 MB limit),
# optional cap on pages per second (0 = none), work per tick, progress flush / completion interval.
CAMPAIGN_BATCH_SIZE = env.int("CAMPAIGN_BATCH_SIZE", default=20_000)
CAMPAIGN_MAX_PAGES_PER_SECOND = env.float("CAMPAIGN_MAX_PAGES_PER_SECOND", default=0)
CAMPAIGN_ORCHESTRATOR_STEP_SECONDS = env.float("CAMPAIGN_ORCHESTRATOR_STEP_SECONDS", default=1.0)
CAMPAIGN_PROGRESS_FLUSH_SECONDS = env.float("CAMPAIGN_PROGRESS_FLUSH_SECONDS", default=2.0)
CAMPAIGN_PAGE_QUERY_JIT = env.bool("CAMPAIGN_PAGE_QUERY_JIT", default=False)
# Batch expander: recipients per chunk, work per poll, pacing (throttle + backpressure; off only in
# tests), backlog bound in front of the workers (unset: 2 x WORKER_BATCH_SIZE x workers, at least
# LEAD_SECONDS of the contract rate), batch messages per poll, the workers' consumer group.
CAMPAIGN_EXPANSION_CHUNK = env.int("CAMPAIGN_EXPANSION_CHUNK", default=1000)
CAMPAIGN_EXPANSION_TIME_BUDGET = env.float("CAMPAIGN_EXPANSION_TIME_BUDGET", default=1.0)
CAMPAIGN_EXPANSION_PACING = env.bool("CAMPAIGN_EXPANSION_PACING", default=True)
CAMPAIGN_EXPANSION_MAX_BACKLOG = env.int("CAMPAIGN_EXPANSION_MAX_BACKLOG", default=None)
CAMPAIGN_EXPANSION_LEAD_SECONDS = env.float("CAMPAIGN_EXPANSION_LEAD_SECONDS", default=1.0)
CAMPAIGN_EXPANDER_POLL_BATCH = env.int("CAMPAIGN_EXPANDER_POLL_BATCH", default=8)
# Campaign throttle burst (seconds of its rate, at least one send); TTL of cursors and sets in Redis.
CAMPAIGN_THROTTLE_BURST_SECONDS = env.float("CAMPAIGN_THROTTLE_BURST_SECONDS", default=0.1)
CAMPAIGN_STATE_TTL_SECONDS = env.int("CAMPAIGN_STATE_TTL_SECONDS", default=14 * 24 * 3600)
