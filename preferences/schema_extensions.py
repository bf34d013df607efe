"""The OpenAPI security scheme of end-user tokens (drf-spectacular reads it from here)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "preferences.authentication.BearerTokenAuthentication"
    name = "Bearer"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An end-user token signed by the producer's backend: HS256 with the API key's token "
            "secret (or RS256 with its registered key), `kid` = the API key's prefix, `sub` = the recipient's "
            "external id, `exp` at most 24 h after `iat`, optional `scope` (`preferences`, `inbox`).",
        }
