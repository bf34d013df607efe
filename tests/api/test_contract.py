"""The API honours its OpenAPI schema (`/api/schema/`), fuzzed by schemathesis with every check.

Every operation, with schema-valid and schema-violating requests, authenticated as a producer (API
key) or an end user (token) as the operation's security says. `SCHEMATHESIS_MAX_EXAMPLES` sets the
examples per operation and mode (default 25: about a minute); raise it for a longer hunt.
"""

import os
import zoneinfo

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.generation.feedback import NO_FEEDBACK

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))

# The schema's own string formats: values the server accepts (and, in negative mode, ones it refuses).
schemathesis.openapi.format("iana-timezone", st.sampled_from(sorted(zoneinfo.available_timezones())))
schemathesis.openapi.format("phone", st.sampled_from(["+4915112345678", "+14155552671", "+442071838750"]))

pytestmark = pytest.mark.django_db


@pytest.fixture
def wsgi_app(db):
    """The project's WSGI application, called in-process inside the test's transaction (as Django's
    test client does: no connection closing at request boundaries)."""
    from django.core import signals
    from django.db import close_old_connections

    from config.wsgi import application

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield application
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def credentials(api_key, django_user_model):
    from rest_framework.authtoken.models import Token

    user = django_user_model.objects.create_user("fuzzed", email="fuzzed@example.com", password="x" * 12)
    return {"producer": f"Api-Key {api_key[1]}", "user": f"Token {Token.objects.create(user=user).key}"}


def _authorization(operation, credentials) -> str | None:
    if operation.path == "/api/v1/events" or operation.path.startswith(("/api/v1/recipients/", "/api/v1/topics")):
        return credentials["producer"]
    if operation.path.startswith("/api/v1/me/"):
        return credentials["user"]
    return None


def _fuzz(operation, mode: GenerationMode, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else None

    # No extracted constants: they are drawn for any string, whatever its format (`phone`, `iana-timezone`).
    @given(case=operation.as_strategy(generation_mode=mode, feedback=NO_FEEDBACK))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        case.call_and_validate(headers=headers)

    run()


def _served_schema(wsgi_app):
    """The served schema, less one member: a fanout event's `target` names a topic that must exist and
    an audience in the campaign predicate language, which the server checks and no schema states
    (tests/subscriptions and tests/campaigns/test_fanout_end_to_end.py test its 400s)."""
    from werkzeug.test import Client

    raw = Client(wsgi_app).get("/api/schema/", headers={"Accept": "application/json"}).json
    del raw["components"]["schemas"]["EventInRequest"]["properties"]["target"]
    schema = schemathesis.openapi.from_dict(raw)
    schema.app, schema.location = wsgi_app, "/api/schema/"
    return schema


def test_every_operation_honours_the_schema(wsgi_app, notification_type, credentials):
    schema = _served_schema(wsgi_app)
    # Credentials are ours (sent by `_fuzz`); NUL characters are refused in every text field (PostgreSQL
    # cannot store them) and no schema language says so.
    schema.config.generation.update(with_security_parameters=False, allow_x00=False)
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "no operation to check"
    for operation in operations:
        for mode in GenerationMode:
            try:
                _fuzz(operation, mode, _authorization(operation, credentials))
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to violate (no input)
            except BaseException as exc:  # every operation's failures in one report
                if not isinstance(exc, Exception | BaseExceptionGroup):
                    raise
                failures.append(f"--- {operation.label} ({mode.value})\n{exc}")
    assert not failures, "\n".join(failures)
