"""The fault suite's fixtures: the guard on the private services, the catalogue, the running pipeline, the
ledger and `run_case`, which drives one case and returns its figures."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from tests.faults.load import Collector, Figures, Ledger, Producers
from tests.faults.pipeline import Pipeline
from tests.faults.services import private_services_problem

N_USERS = 300
#: FAULTS_SCALE shrinks (CI: 0.3) or grows the load of every case: its rate and how long it runs after the fault.
SCALE = float(os.environ.get("FAULTS_SCALE", "1"))
RATE = max(4.0, 12.0 * SCALE)  # events/s over all producers (a digest event has 3 recipients)
BEFORE = 3.0  # s of load before the fault: every role is mid-batch when it strikes
AFTER = max(4.0, 10.0 * SCALE)  # s of load after the fault
#: s for the last accepted messages to arrive: longer than the e-mail dedup lease (180 s) the claims of a
#: SIGKILLed worker may wait for, so that "lost" means lost, not late.
DRAIN_TIMEOUT = 240.0
SETTLE = 3.0  # s after the last arrival in which a duplicate would still show
FIGURES: list[Figures] = []


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("fault injection: per case")
        for figures in FIGURES:
            terminalreporter.write_line(figures.line())


@pytest.fixture(scope="session", autouse=True)
def private_services():
    """The suite restarts PostgreSQL, Redis and Kafka: it runs only on `make faults`'s private set."""
    if problem := private_services_problem():
        pytest.skip(f"fault suite: {problem}")


@pytest.fixture(scope="session")
def django_db_setup(private_services, django_test_environment, django_db_blocker, django_db_modify_db_settings):
    """The run's test database, created although no test is marked `django_db`: the cases never touch the
    database inside a test transaction (the platform's processes must see every row committed)."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        databases = setup_databases(verbosity=0, interactive=False, aliases={"default"}, serialized_aliases=set())
    yield
    with django_db_blocker.unblock():
        teardown_databases(databases, verbosity=0)


@dataclass
class Catalog:
    users: list[int]
    raw_key: str
    launcher: object
    campaign_type: object


@pytest.fixture(scope="session")
def catalog(private_services, django_db_setup, django_db_blocker) -> Catalog:
    """Users with e-mail addresses, the three event types and their templates, SendGrid (primary) and SMTP
    (secondary) for e-mail, an API key and a campaign launcher; committed, so every process sees them."""
    from django.contrib.auth import get_user_model

    from notifications.models import ApiKey, Category, NotificationTemplate, NotificationType, Provider, Urgency
    from preferences.models import RecipientProfile

    user_model = get_user_model()
    with django_db_blocker.unblock():
        users = user_model.objects.bulk_create(
            user_model(username=f"faults-{i}", email=f"u{i}@example.com", first_name=f"U{i}") for i in range(N_USERS)
        )
        RecipientProfile.objects.bulk_create(
            RecipientProfile(user=u, locale="en", timezone="UTC", attributes={"cohort": "faults"}) for u in users
        )
        types = {}
        for key, category, urgency in (
            ("faults.otp", Category.SECURITY, Urgency.URGENT),
            ("faults.order", Category.TRANSACTIONAL, Urgency.NORMAL),
            ("faults.digest", Category.MARKETING, Urgency.BULK),
        ):
            types[key] = NotificationType.objects.create(
                key=key, name=key, category=category, urgency=urgency, default_channels=["email"]
            )
            NotificationTemplate.objects.create(
                notification_type=types[key], channel="email", subject=f"{key} {{{{ code }}}}",
                body="Code {{ code }}, {{ headline }}.", html="<p>{{ headline }}</p>",
            )  # fmt: skip
        Provider.objects.create(name="sendgrid", channel="email", kind="sendgrid", rate=2000, burst=200, priority=1)
        Provider.objects.create(name="smtp", channel="email", kind="smtp", rate=2000, burst=200, priority=2)
        _, raw_key = ApiKey.generate(service="faults")
        launcher = user_model.objects.create_superuser("faults-launcher", "launcher@example.org", "x" * 20)
    return Catalog([u.pk for u in users], raw_key, launcher, types["faults.digest"])


@pytest.fixture(scope="session")
def pipeline(catalog, sandbox, kafka_topics, tmp_path_factory):
    """Every role of the Procfile on the private services, the run's topics and Redis prefix, the sandboxes."""
    sandbox.client("sendgrid").configure(latency={"kind": "normal", "mean_ms": 20, "stddev_ms": 5})
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        **sandbox.env,
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "KAFKA_TOPIC_PREFIX": kafka_topics,
        "KAFKA_DEFAULT_PARTITIONS": str(settings.KAFKA_DEFAULT_PARTITIONS),
        "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_DEBUG": "0",
        "LOG_LEVEL": "INFO",  # "partitions assigned" is how readiness is seen
        "CAMPAIGN_BATCH_SIZE": "50",  # a small campaign still has several batches to be mid-way through
        "PROVIDER_BREAKER_COOL_DOWN": "3",  # the outage case sees the recovery within its run
    }
    logdir = Path(os.environ.get("FAULTS_LOG_DIR") or tmp_path_factory.mktemp("faults-logs"))
    running = Pipeline(env, logdir)
    try:
        running.start_all()
        yield running
    finally:
        codes = running.stop()
        print(f"fault suite: pipeline stopped {codes}; logs in {logdir}")


@pytest.fixture(scope="session")
def ledger(sandbox):
    ledger = Ledger()
    collector = Collector({name: sandbox.client(name) for name in ("sendgrid", "smtp")}, ledger)
    collector.start()
    ledger.collector = collector
    yield ledger
    collector.stop_event.set()


@dataclass
class Case:
    """What a case's fault callable may use."""

    name: str
    pipeline: Pipeline
    ledger: Ledger
    catalog: Catalog
    django_db_blocker: object
    outcome: object = None  # what the fault callable returned (an outage in seconds, …)
    campaign_id: int | None = None

    def launch_campaign(self) -> str:
        """A campaign to every user, launched as a marketer would; its messages join the case's expected set."""
        from campaigns import services
        from campaigns.models import Campaign, CampaignCopy

        with self.django_db_blocker.unblock():
            campaign = Campaign.objects.create(
                name=f"faults {self.name}", notification_type=self.catalog.campaign_type, channels=["email"],
                audience={"all": [{"field": "attributes.cohort", "op": "eq", "value": "faults"}]},
            )  # fmt: skip
            CampaignCopy.objects.create(campaign=campaign, channel="email", locale="", subject="Hi", body="News.")
            services.campaign_launch(campaign_id=campaign.pk, user=self.catalog.launcher)
            campaign.refresh_from_db()
        now = time.time()
        for uid in self.catalog.users:
            self.ledger.accept(f"{campaign.launch_id}:{uid}:email", self.name, "campaign", now)
        self.campaign_id = campaign.pk
        return str(campaign.launch_id)

    def assert_campaign_completed_after_its_last_send(self, timeout: float = 60.0) -> None:
        """The campaign is *completed*, and only once every one of its messages had reached the provider."""
        from campaigns.models import Campaign, CampaignState

        deadline = time.monotonic() + timeout
        with self.django_db_blocker.unblock():
            while (campaign := Campaign.objects.get(pk=self.campaign_id)).state != CampaignState.COMPLETED:
                assert time.monotonic() < deadline, f"the campaign is still {campaign.state} after {timeout} s"
                time.sleep(0.5)
        with self.ledger.lock:
            last = max(self.ledger.first_seen[k] for k, e in self.ledger.expected.items()
                       if e.case == self.name and e.kind == "campaign")  # fmt: skip
        early = last - campaign.finished_at.timestamp()
        assert early <= 0, f"completed {early:.1f} s before its last message reached the provider"

    def where_are(self, keys: list[str]) -> str:
        """For a report on lost messages: each key's delivery-log row and dedup key, the campaign's progress."""
        import redis

        from campaigns.models import Campaign
        from campaigns.progress import progress_snapshot
        from notifications.models import DeliveryLog
        from notifications.redis_keys import dedup_shard_tag, hash_tag

        client = redis.Redis.from_url(settings.REDIS_URL)
        lines = []
        with self.django_db_blocker.unblock():
            for key in keys:
                event_id, user_id, channel = key.split(":")[:3]
                rows = list(DeliveryLog.objects.filter(event_id=event_id, user_id=user_id, channel=channel)
                            .values_list("status", "reason", "attempts"))  # fmt: skip
                dedup = f"{settings.REDIS_KEY_PREFIX}dedup:{hash_tag(dedup_shard_tag(key))}:{key}"
                lines.append(f"  {key}: delivery log {rows}, dedup {client.get(dedup)!r} ttl {client.pttl(dedup)} ms")
            if self.campaign_id:
                campaign = Campaign.objects.get(pk=self.campaign_id)
                lines.append(f"  campaign {campaign.state}: {progress_snapshot(campaign, redis_client=client)}")
        return "\n".join(lines)

    def wait_for_sends(self, n: int = 20, kind: str | None = None, timeout: float = 60.0) -> None:
        """Until `n` of this case's messages (of `kind`) arrived: the pipeline is busy with them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.ledger.lock:
                mine = [k for k, e in self.ledger.expected.items() if e.case == self.name and kind in (None, e.kind)]
                arrived = sum(1 for k in mine if k in self.ledger.seen)
            if arrived >= n:
                return
            time.sleep(0.1)
        raise AssertionError(f"{n} {kind or ''} messages of {self.name} did not arrive within {timeout} s")


@pytest.fixture
def run_case(pipeline, ledger, catalog, django_db_blocker):
    """`run_case(name, fault)`: steady load, `fault(case)` after BEFORE s (its return value, e.g. the outage
    in seconds, lands in `case.outcome`), AFTER s more load, then the drain; prints the figures and returns
    them with the case."""

    def run(name: str, fault: Callable[[Case], object]) -> tuple[Figures, Case]:
        case = Case(name, pipeline, ledger, catalog, django_db_blocker)
        if revived := pipeline.revive():
            print(f"fault suite: restarted {revived}, which exited in an earlier case")
        fail_open_before = _fail_open(pipeline)
        unexpected_before = ledger.unexpected()
        with Producers(pipeline.base_url, catalog.raw_key, catalog.users, ledger, name, rate=RATE):
            time.sleep(BEFORE)
            case.outcome = fault(case)
            time.sleep(AFTER)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while ledger.missing(name) and time.monotonic() < deadline:
            assert ledger.collector.error is None, f"reading the sandboxes failed: {ledger.collector.error}"
            time.sleep(0.5)
        time.sleep(SETTLE)
        figures = ledger.figures(name)
        try:
            figures.fail_open = max(0.0, _fail_open(pipeline) - fail_open_before)  # a restart resets it
        except httpx.HTTPError:  # a worker is gone: pipeline.check() below says which
            figures.fail_open = float("nan")
        figures.outage = case.outcome if isinstance(case.outcome, float) else None
        FIGURES.append(figures)
        print(figures.line())
        if figures.lost or figures.duplicated:
            print(case.where_are(figures.lost_sample + list(figures.duplicate_sample)[:3]))
        pipeline.check()
        assert ledger.unexpected() == unexpected_before, "nothing nobody accepted was sent"
        return figures, case

    return run


def _fail_open(pipeline: Pipeline) -> float:
    return sum(pipeline.metric(name, "dedup_fail_open_total") for name in ("worker0", "worker1"))


def assert_exactly_once(figures: Figures) -> None:
    """The oracle: every accepted (event, recipient, channel) arrived, and none twice, except sends the dedup
    breaker let through while Redis was unreachable (counted in dedup_fail_open_total)."""
    assert figures.accepted > 0 and figures.urgent > 0, "the case carried load"
    assert figures.lost == 0, f"{figures.lost} accepted messages never arrived"
    assert figures.duplicated <= figures.fail_open, (
        f"{figures.duplicated} duplicates, {figures.fail_open:g} dedup fail-open sends"
    )
