"""Missing or bad credentials answer 401 with `WWW-Authenticate` on every API operation of the schema."""

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

BAD_CREDENTIALS = [
    None,
    "Token 0000000000000000000000000000000000000000",
    "Api-Key np_00000000_nope",
    "Bearer not-a-token",
]


#: Every operation that needs credentials (the first test checks this against the schema).
OPERATIONS = [
    ("post", "/api/v1/events"),
    ("get", "/api/v1/me/devices"),
    ("post", "/api/v1/me/devices"),
    ("delete", "/api/v1/me/devices/{id}"),
    ("get", "/api/v1/me/notifications"),
    ("post", "/api/v1/me/notifications/read-all"),
    ("post", "/api/v1/me/notifications/{id}/read"),
    ("get", "/api/v1/me/preferences"),
    ("put", "/api/v1/me/preferences"),
    ("patch", "/api/v1/me/preferences"),
    ("get", "/api/v1/me/profile"),
    ("patch", "/api/v1/me/profile"),
    ("put", "/api/v1/recipients/{id}"),
    ("get", "/api/v1/recipients/{id}"),
    ("delete", "/api/v1/recipients/{id}"),
    ("post", "/api/v1/recipients/bulk"),
    ("get", "/api/v1/topics"),
    ("post", "/api/v1/topics"),
    ("get", "/api/v1/topics/{key}/subscribers"),
    ("post", "/api/v1/topics/{key}/subscribers"),
    ("post", "/api/v1/topics/{key}/subscribers/remove"),
    ("get", "/api/v1/me/topics"),
    ("put", "/api/v1/me/topics/{key}"),
    ("delete", "/api/v1/me/topics/{key}"),
]


def _schema():
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def test_the_schema_declares_secured_operations_and_their_schemes():
    schema = _schema()
    secured = {
        (method, path)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if operation.get("security", [{}]) not in ([], [{}])
    }
    secured = {(method, path.replace("{external_id}", "{id}")) for method, path in secured}
    assert secured == set(OPERATIONS)
    assert {"ApiKeyAuth", "tokenAuth", "cookieAuth"} <= set(schema["components"]["securitySchemes"])
    assert schema["paths"]["/api/v1/events"]["post"]["security"] == [{"ApiKeyAuth": []}]
    assert "WWW-Authenticate" in schema["paths"]["/api/v1/me/profile"]["get"]["responses"]["401"]["headers"]


@pytest.mark.parametrize("authorization", BAD_CREDENTIALS)
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_missing_or_bad_credentials_are_401_with_www_authenticate(method, path, authorization):
    client = APIClient()
    if authorization:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    response = getattr(client, method)(path.replace("{id}", "1").replace("{key}", "k"), {}, format="json")
    assert response.status_code == 401, response.content
    # The first scheme the endpoint accepts: an end user's token (RFC 6750) on /me, a producer key elsewhere.
    assert response["WWW-Authenticate"].split(" ", 1)[0] in {"Api-Key", "Token", "Bearer"}
    assert response.json()["code"] in {"not_authenticated", "authentication_failed", "invalid_token"}


def test_schema_and_docs_stay_public():
    client = APIClient()
    assert client.get(reverse("schema")).status_code == 200
