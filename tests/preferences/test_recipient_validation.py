"""The lean recipient check accepts only what the serializer accepts, and gives the same data."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preferences.recipient_serializers import RecipientItemInSerializer, recipient_data
from preferences.recipient_validation import _email_ok, fast_recipient

texts = st.one_of(st.text(max_size=8), st.sampled_from(["", " x", "x ", "a\x00b", "Europe/Zurich", "de-CH", "x" * 300]))
values = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), texts)
recipients = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.sampled_from(["u-1", "a b", "", "ü" * 256]), texts),
        "email": st.one_of(st.sampled_from(["ana@example.com", "not-an-address", " a@b.co"]), values),
        "first_name": values,
        "last_name": values,
        "phone": st.one_of(st.sampled_from(["+4915112345678", "+49 151 12345678", "0151"]), values),
        "locale": st.one_of(st.sampled_from(["en", "de-CH", "english please"]), values),
        "timezone": st.one_of(st.sampled_from(["Europe/Zurich", "Mars/Olympus"]), values),
        "attributes": st.one_of(st.dictionaries(st.text(max_size=4), values, max_size=3), values),
        "devices": st.one_of(
            st.lists(
                st.fixed_dictionaries({"platform": st.sampled_from(["fcm", "apns", "blackberry", 1]), "token": texts}),
                max_size=2,
            ),
            values,
        ),
        "webhook_url": st.sampled_from(["https://h.example/x", ""]),
        "extra": values,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(item=recipients)
def test_the_lean_check_agrees_with_the_serializer(item):
    fast = fast_recipient(item)
    if fast is None:
        return  # the serializer decides
    serializer = RecipientItemInSerializer(data=item)
    assert serializer.is_valid(), (item, serializer.errors)
    assert fast == recipient_data(serializer.validated_data["id"], serializer.validated_data)


def test_a_plain_item_takes_the_lean_path():
    item = {
        "id": "u-1",
        "email": "ana@example.com",
        "phone": "+4915112345678",
        "devices": [{"platform": "fcm", "token": "t"}],
    }
    assert fast_recipient(item) is not None


ADDRESSES = [
    "ana@example.com",
    "a.b+c@sub.example.co.uk",
    '"quoted local"@example.com',
    "ana@localhost",
    "ana@[127.0.0.1]",
    "ana@[::1]",
    "ana@[300.1.1.1]",
    "ana@exämple.ch",
    "ana@example.com.",
    "ana@-example.com",
    "ana@example",
    "ana@@example.com",
    "ana.@example.com",
    "@example.com",
    "ana@",
    "no-at-sign",
    "a" * 310 + "@example.com",
]


def _django_accepts(address: str) -> bool:
    try:
        validate_email(address)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("address", ADDRESSES)
def test_the_lean_email_check_agrees_with_django(address):
    assert _email_ok(address) is _django_accepts(address)
    assert _email_ok(address) is _django_accepts(address)  # the remembered domain verdict


@settings(max_examples=300, deadline=None)
@given(local=st.text(max_size=6), domain=st.text(max_size=10))
def test_the_lean_email_check_agrees_with_django_on_any_text(local, domain):
    address = f"{local}@{domain}"
    assert _email_ok(address) is _django_accepts(address)
