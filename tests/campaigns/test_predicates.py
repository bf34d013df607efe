"""Audience predicates: whitelisted fields and operators compiled to SQL; everything else refused with a path."""

import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from campaigns.predicates import compile_predicate, validate_predicate
from tests.campaigns.conftest import copy_users

pytestmark = pytest.mark.django_db


def matching(predicate, ids):
    q = compile_predicate(predicate)
    return set(get_user_model().objects.filter(pk__in=ids).filter(q).values_list("pk", flat=True))


@pytest.fixture
def people():
    countries = ["DE", "FR", None, "DE"]
    locales = ["de-ch", "fr", "en", ""]
    documents = [
        None,
        {"global_mute": True},
        {"categories": {"marketing": {"email": False}}},
        {"categories": {"marketing": {"push": True}}},
    ]
    ids = copy_users(
        4,
        attributes=lambda i: ({"country": countries[i]} if countries[i] else {}) | {"age": 20 + 10 * i},
        locale=lambda i: locales[i],
        document=lambda i: documents[i],
        device=lambda i: "fcm" if i in (0, 3) else None,
        phone=lambda i: "+4915112345678" if i == 1 else "",
    )
    return ids


def test_attribute_and_profile_conditions(people):
    a, b, c, d = people
    assert matching({"all": [{"field": "attributes.country", "op": "eq", "value": "DE"}]}, people) == {a, d}
    assert matching({"field": "profile.locale", "op": "in", "value": ["DE-CH", "fr"]}, people) == {a, b}
    assert matching({"field": "attributes.age", "op": "gte", "value": 40}, people) == {c, d}
    assert matching({"field": "attributes.country", "op": "exists", "value": False}, people) == {c}
    assert matching({"field": "profile.locale", "op": "startswith", "value": "de"}, people) == {a}


def test_negations_include_users_without_the_attribute(people):
    _a, b, c, _d = people
    assert matching({"field": "attributes.country", "op": "ne", "value": "DE"}, people) == {b, c}
    assert matching({"not": {"field": "attributes.country", "op": "eq", "value": "DE"}}, people) == {b, c}
    assert matching({"field": "attributes.country", "op": "not_in", "value": ["DE", "FR"]}, people) == {c}


def test_preference_state_and_reachability(people):
    a, b, c, d = people
    assert matching({"field": "muted", "op": "is", "value": True}, people) == {b}
    assert matching({"field": "opted_out:marketing:email", "op": "is", "value": True}, people) == {c}
    assert matching({"field": "opted_in:marketing:push", "op": "is", "value": True}, people) == {d}
    assert matching({"field": "has_device", "op": "is", "value": True}, people) == {a, d}
    assert matching({"field": "reachable:sms", "op": "is", "value": True}, people) == {b}


def test_groups_compose(people):
    a, _b, _c, d = people
    predicate = {
        "all": [
            {"field": "attributes.country", "op": "eq", "value": "DE"},
            {
                "any": [
                    {"field": "profile.locale", "op": "eq", "value": "de-ch"},
                    {"field": "opted_in:marketing:push", "op": "is", "value": True},
                ]
            },
            {"not": {"field": "muted", "op": "is", "value": True}},
        ]
    }
    assert matching(predicate, people) == {a, d}
    assert matching({"all": []}, people) == set(people)
    assert matching({"any": []}, people) == set()


def test_relative_dates_are_anchored(people):
    now = dt.datetime.now(dt.UTC)
    q_recent = compile_predicate({"field": "user.date_joined", "op": "within_days", "value": 1}, now=now)
    q_old = compile_predicate({"field": "user.date_joined", "op": "older_than_days", "value": 1}, now=now)
    users = get_user_model().objects.filter(pk__in=people)
    assert users.filter(q_recent).count() == 4 and users.filter(q_old).count() == 0


@pytest.mark.parametrize(
    ("predicate", "message"),
    [
        (
            {"all": [{"field": "user.password", "op": "eq", "value": "x"}]},
            "all[0].field: unknown field 'user.password'",
        ),
        (
            {"all": [{"field": "profile.locale", "op": "regex", "value": ".*"}]},
            "all[0].op: 'regex' is not an operator of profile.locale",
        ),
        ({"any": [{"not": {"field": "muted", "op": "is", "value": "yes"}}]}, "any[0].not.value: must be true or false"),
        (
            {"all": [{"field": "attributes.x'; DROP TABLE auth_user; --", "op": "eq", "value": 1}]},
            "all[0].field: an attribute key is",
        ),
        (
            {"all": [{"field": "opted_out:newsletter:email", "op": "is", "value": True}]},
            "unknown category 'newsletter'",
        ),
        ({"all": [{"field": "profile.locale", "op": "in", "value": []}]}, "all[0].value: must be a non-empty list"),
        (
            {"all": [{"field": "user.date_joined", "op": "after", "value": "last tuesday"}]},
            "all[0].value: must be an ISO date",
        ),
        ({"all": {"field": "muted"}}, "all: must be a list"),
        ({"all": [], "any": []}, "a group has exactly one key"),
        ({"field": "muted", "op": "is", "value": True, "extra": 1}, "unknown keys ['extra']"),
        ("everyone", "(root): must be an object"),
    ],
)
def test_invalid_predicates_are_refused_with_the_path(predicate, message):
    with pytest.raises(ValidationError) as info:
        validate_predicate(predicate)
    assert any(message in m for m in info.value.messages), info.value.messages


def test_every_error_is_reported_at_once():
    with pytest.raises(ValidationError) as info:
        validate_predicate(
            {"all": [{"field": "nope", "op": "eq", "value": 1}, {"field": "muted", "op": "eq", "value": True}]}
        )
    assert len(info.value.messages) == 2


def test_too_deep_and_too_many_are_refused():
    deep = {"field": "muted", "op": "is", "value": True}
    for _ in range(10):
        deep = {"not": deep}
    with pytest.raises(ValidationError, match="nested deeper"):
        validate_predicate(deep)
    with pytest.raises(ValidationError, match="more than 100 conditions"):
        validate_predicate({"any": [{"field": "muted", "op": "is", "value": True}] * 101})
