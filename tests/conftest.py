"""Shared fixtures: an isolated Kafka topic prefix per test run, API clients, subprocess env, the
platform's processes, role threads, a private Redis, a headless browser."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from django.conf import settings


@pytest.fixture(scope="session")
def django_db_modify_db_settings():
    """A test database per run, so concurrent runs (developers, CI, benchmarks) never collide."""
    name = os.environ.get("TEST_DATABASE_NAME") or f"test_notifications_{os.getpid()}"
    settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = name


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """pytest-django's test database, and before it is dropped: the ingest's group-commit thread
    stopped (it holds a connection of its own)."""
    yield
    from notifications.ingest.group_commit import committer

    committer.close()


@pytest.fixture(scope="session", autouse=True)
def kafka_topics():
    """Every test run gets its own topic prefix, created up front and deleted afterwards."""
    from notifications.bus.kafka_admin import delete_topics_with_prefix, ensure_topics

    prefix = f"test{uuid.uuid4().hex[:8]}."
    settings.KAFKA_TOPIC_PREFIX = prefix
    # Redis keys too: user ids restart in every run's fresh database, so cached preferences,
    # dedup keys and caps of an earlier run must not be visible.
    settings.REDIS_KEY_PREFIX = f"{prefix[:-1]}:"
    settings.KAFKA_DEFAULT_PARTITIONS = 3
    ensure_topics()
    yield prefix
    delete_topics_with_prefix(prefix)


@pytest.fixture
def topics(settings, kafka_topics):
    """A private topic and Redis key prefix for one test: its consumers see only its own messages."""
    from notifications.bus.kafka_admin import delete_topics_with_prefix, ensure_topics

    prefix = f"{kafka_topics[:-1]}-{uuid.uuid4().hex[:6]}."
    settings.KAFKA_TOPIC_PREFIX = prefix
    settings.REDIS_KEY_PREFIX = f"{prefix[:-1]}:"
    ensure_topics()
    yield prefix
    delete_topics_with_prefix(prefix)


@pytest.fixture
def subprocess_env(db, kafka_topics):
    """Environment for a platform process started by a test: same test database, topics, Redis."""
    db_settings = settings.DATABASES["default"]
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": (
                f"postgres://{db_settings['USER']}:{db_settings['PASSWORD']}@{db_settings['HOST']}:"
                f"{db_settings['PORT']}/{db_settings['NAME']}"
            ),
            "KAFKA_TOPIC_PREFIX": kafka_topics,
            "KAFKA_DEFAULT_PARTITIONS": str(settings.KAFKA_DEFAULT_PARTITIONS),
            "REDIS_URL": settings.REDIS_URL,
            "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "METRICS_PORT": "0",
            "OUTBOX_BUCKETS": str(settings.OUTBOX_BUCKETS),
        }
    )
    return env


@pytest.fixture
def notification_type(db):
    from notifications.models import NotificationType

    return NotificationType.objects.create(
        key="order.shipped", name="Order shipped", default_channels=["email", "push"]
    )


@pytest.fixture
def types(db):
    """order.shipped (four channels, a German e-mail variant), auth.password_reset (urgent), marketing.digest
    (bulk): the types and templates of the dispatcher's tests."""
    from notifications.models import Category, NotificationTemplate, NotificationType, Urgency

    def new_type(key, name, category, channels, **fields):
        return NotificationType.objects.create(
            key=key, name=name, category=category, default_channels=channels, **fields
        )

    def template(notification_type, channel, **text):
        NotificationTemplate.objects.create(notification_type=notification_type, channel=channel, **text)

    channels = ["email", "push", "sms", "inapp"]
    shipped = new_type(
        "order.shipped", "Order shipped", Category.TRANSACTIONAL, channels, sample_payload={"order": "1"}
    )
    order = {"subject": "Order {{ order }} shipped", "title": "Shipped", "body": "Your order {{ order }} is on its way"}
    for channel in shipped.default_channels:
        template(shipped, channel, html="<p>Order {{ order }}</p>", **order)
    german = {"subject": "Bestellung {{ order }} versandt", "body": "Ihre Bestellung {{ order }} ist unterwegs"}
    template(shipped, "email", locale="de", **german)
    reset = new_type("auth.password_reset", "Reset", Category.SECURITY, ["email"], urgency=Urgency.URGENT)
    template(reset, "email", subject="Reset", body="{{ url }}")
    digest = new_type("marketing.digest", "Digest", Category.MARKETING, ["email", "push"], urgency=Urgency.BULK)
    for channel in digest.default_channels:
        template(digest, channel, subject="Digest", title="Digest", body="News")
    return {"shipped": shipped, "reset": reset, "digest": digest}


@pytest.fixture
def api_key(db):
    from notifications.models import ApiKey

    key, raw = ApiKey.generate(service="orders")
    return key, raw


@pytest.fixture
def service_client(api_key):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {api_key[1]}")
    return client


@pytest.fixture
def fresh_topic(kafka_topics):
    """A new, empty topic for one test (deleted with the run's prefix at the end of the session)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from notifications.bus.config import admin_config

    name = f"{kafka_topics}scratch.{uuid.uuid4().hex[:10]}"
    admin = AdminClient(admin_config())  # keep the client alive until the future resolves
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=3, replication_factor=settings.KAFKA_REPLICATION_FACTOR)]
    )
    futures[name].result(30)
    return name


SANDBOX_PROVIDERS = ("sendgrid", "twilio", "fcm", "apns", "webhook", "smtp")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    """Every provider sandbox on free ports, for the whole run; settings point the adapters at it, and
    `sandbox.env` (platform/sandbox.env with this sandbox's URLs) does for platform processes."""
    from provider_sandbox import credentials
    from provider_sandbox.platform_env import provider_env
    from provider_sandbox.process import SandboxProcess

    args = ["--only", ",".join(SANDBOX_PROVIDERS), "--smtp-control-port", "0", "--seed", "11"]
    for name in SANDBOX_PROVIDERS:
        args += [f"--{name}-port", "0"]
    args += ["--webhook-secret", credentials.WEBHOOK_SECRET]
    proc = SandboxProcess(args).start()
    creds = credentials.ensure_sandbox_credentials(
        tmp_path_factory.mktemp("sandbox-credentials"), fcm_token_uri=f"{proc.url('fcm')}/token"
    )
    proc.env = provider_env(proc.urls, credentials=creds)
    for name, value in proc.env.items():  # as config/settings.py reads them
        if name in ("SENDGRID_API_KEY", "SENDGRID_API_URL"):
            settings.ANYMAIL = {**settings.ANYMAIL, name: value}
        else:
            assert hasattr(settings, name), f"platform/sandbox.env sets {name}, which is no setting"
            setattr(settings, name, int(value) if name == "SMTP_PORT" else value)
    yield proc
    proc.stop()


#: Provider rows of the tests that run workers against the sandboxes, by name: rates that never hold a
#: test up, SMTP behind SendGrid.
SANDBOX_PROVIDER_ROWS = {
    "sendgrid": {"channel": "email", "kind": "sendgrid", "rate": 1000, "burst": 50, "priority": 1},
    "smtp": {"channel": "email", "kind": "smtp", "rate": 1000, "burst": 50, "priority": 2},
    "twilio": {"channel": "sms", "kind": "twilio", "rate": 1000, "burst": 50},
    "fcm": {"channel": "push", "kind": "fcm", "rate": 1000, "burst": 50},
    "apns": {"channel": "push", "kind": "apns", "rate": 1000, "burst": 50},
    "webhook": {"channel": "webhook", "kind": "webhook", "rate": 1000, "burst": 50},
    "inapp": {"channel": "inapp", "kind": "inapp", "rate": 10000, "burst": 500},
}


@pytest.fixture
def sandbox_providers(db, sandbox):
    """`sandbox_providers("sendgrid", "twilio")`: those providers' rows (SANDBOX_PROVIDER_ROWS), their
    sandboxes reset to their start-up behaviour; returns the rows by name."""
    from notifications.models import Provider

    def create(*names: str) -> dict:
        for name in names:
            if name in SANDBOX_PROVIDERS:  # in-app has no sandbox
                sandbox.client(name).reset(config=True)
        rows = [Provider(name=name, **SANDBOX_PROVIDER_ROWS[name]) for name in names]
        Provider.objects.bulk_create(rows)
        return {row.name: row for row in rows}

    return create


class Platform:
    """Platform processes for one test, each with the test's database, topics and Redis prefix: the
    outbox relay in a thread, the other roles as `manage.py` subprocesses."""

    def __init__(self, env: dict[str, str]):
        from notifications.bus.config import producer_config
        from notifications.outbox.relay import RELAY_PRODUCER_OVERRIDES, OutboxRelay, RelayConfig, conninfo_from_django

        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.relay = OutboxRelay(
            RelayConfig(
                conninfo=conninfo_from_django(),
                producer_config=producer_config(**RELAY_PRODUCER_OVERRIDES),
                buckets=settings.OUTBOX_BUCKETS,
                batch_size=500,
                poll_interval=0.2,
            )
        )
        self.relay_thread = threading.Thread(target=self.relay.run, daemon=True)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "manage.py", *args], env=self.env)
        self.procs[name] = proc
        return proc

    def orchestrator(self, *args: str) -> subprocess.Popen:
        return self.start("orchestrator", "run_campaign_orchestrator", *args)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def __enter__(self):
        self.relay_thread.start()
        return self

    def __exit__(self, *exc):
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        codes = {name: proc.wait(60) for name, proc in self.procs.items()}
        self.relay.stop_event.set()
        self.relay_thread.join(30)
        if exc[0] is None:
            assert all(code == 0 for code in codes.values()), f"every process stops cleanly on SIGTERM: {codes}"


@pytest.fixture
def platform(topics, subprocess_env, sandbox):
    """The platform's processes on the test's topics, talking to the provider sandboxes."""
    env = {
        **subprocess_env,
        **sandbox.env,
        "KAFKA_TOPIC_PREFIX": topics,
        "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,
        "LOG_LEVEL": "WARNING",
    }
    with Platform(env) as running:
        yield running


class RunningRole:
    """A platform role (a consumer runner, a relay: anything with `run()` and `stop_event`) in a thread
    for the duration of a `with` block. Leaving the block stops the role and re-raises whatever the
    thread raised, so a role that crashed fails the test instead of passing silently."""

    def __init__(self, runner, *, wait_assigned: bool = True, stop_timeout: float = 30.0):
        self.runner = runner
        self.wait_assigned = wait_assigned and hasattr(runner, "assigned")
        self.stop_timeout = stop_timeout
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:
            self.error = exc

    def __enter__(self):
        self.thread.start()
        if self.wait_assigned:
            deadline = 60.0
            while not self.runner.assigned.wait(0.1):
                deadline -= 0.1
                if self.error is not None or deadline <= 0:
                    self.stop()
                    raise AssertionError("the role never got its partitions") from self.error
        return self

    def stop(self) -> None:
        self.runner.stop_event.set()
        self.thread.join(self.stop_timeout)
        assert not self.thread.is_alive(), "the role stops on request"
        if self.error is not None:
            raise self.error

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture
def running():
    """`with running(runner):` runs a platform role in a thread for the block (see RunningRole)."""
    return RunningRole


class PrivateRedis:
    """A redis-server of one test's own on a free port, without persistence, to stop and start again
    (a restart loses its data) or to freeze and thaw: never the shared Redis."""

    def __init__(self, directory) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.directory = directory
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
        )
        probe = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 15
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.02)
        probe.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def freeze(self) -> None:
        """Unresponsive, not gone: connections stay open and calls time out."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of this test's own, started (`.stop()` / `.start()` restart it; see PrivateRedis)."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rsa_key():
    """A throwaway RSA key (service-account assertions for FCM)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def dead_redis():
    """A Redis client pointed at a local port with nothing listening (connecting gets ECONNREFUSED at
    once), with short timeouts and no retries."""
    from notifications.delivery.redis_client import make_redis_client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_redis_client(f"redis://127.0.0.1:{port}/0", socket_timeout=0.1, socket_connect_timeout=0.1, retries=0)
    yield client
    client.close()


# Browser tests (the campaign admin, the preference centre): Debian's chromium and chromium-driver.
CHROMIUM = os.environ.get("CHROMIUM_BINARY") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser tests must run in CI, but {reason} (.ci/run installs chromium, chromium-driver)")
    pytest.skip(f"{reason}: apt-get install chromium chromium-driver to run the browser tests")


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (starting one costs about a second)."""
    try:
        from selenium import webdriver
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[dev]')")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            _unavailable(f"{path} is missing")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver's path too, Selenium Manager downloads nothing
    arguments = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400", "--lang=en-US")
    for argument in arguments:
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
