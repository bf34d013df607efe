"""`/metrics` on the web process: a bearer token when METRICS_TOKEN is set, else loopback only."""

import pytest
from django.test import Client


@pytest.fixture
def client():
    return Client()


def test_without_a_token_setting_loopback_is_served(client, settings):
    settings.METRICS_TOKEN = ""
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200 and b"# HELP" in response.content


def test_without_a_token_setting_other_addresses_are_refused(client, settings):
    settings.METRICS_TOKEN = ""
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 403
    assert b"# HELP" not in response.content


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic c2VjcmV0", "Bearer "])
def test_with_a_token_setting_missing_or_bad_tokens_are_401(client, settings, authorization):
    settings.METRICS_TOKEN = "s3cret-scrape-token"
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", **headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"# HELP" not in response.content


def test_with_a_token_setting_the_token_is_served_from_anywhere(client, settings):
    settings.METRICS_TOKEN = "s3cret-scrape-token"
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer s3cret-scrape-token")
    assert response.status_code == 200 and b"# HELP" in response.content
