"""The audience builder's whitelist (builder_schema) is the server's: everything it offers compiles."""

import re

import pytest
from django.core.exceptions import ValidationError

from campaigns.predicates import OPERATORS, builder_schema, compile_predicate

pytestmark = pytest.mark.django_db

SAMPLE_VALUES = {
    "string": "de",
    "datetime": "2026-01-31",
    "json": "pro",
    "bool": True,
}


def sample_value(kind: str, op: str):
    if op in ("is", "exists"):
        return True
    if op in ("in", "not_in"):
        return ["de", "fr"]
    if op in ("within_days", "older_than_days"):
        return 30
    return SAMPLE_VALUES[kind]


def offered_fields(schema) -> list[tuple[str, str]]:
    """Every (field, kind) the builder can produce: plain fields, and each pattern with every choice."""
    out = [(f["name"], f["kind"]) for f in schema["fields"]]
    for pattern in schema["patterns"]:
        names = [pattern["pattern"]]
        for param in pattern["params"]:
            choices = [c[0] for c in param["choices"]] if param["choices"] else ["country"]
            names = [name.replace(f"<{param['name']}>", choice, 1) for name in names for choice in choices]
        out += [(name, pattern["kind"]) for name in names]
    return out


def test_every_field_and_operator_the_builder_offers_compiles():
    schema = builder_schema()
    assert schema["operators"] == {kind: list(ops) for kind, ops in OPERATORS.items()}
    fields = offered_fields(schema)
    assert ("opted_out:marketing:email", "bool") in fields and ("has_device:apns", "bool") in fields
    for field, kind in fields:
        for op in schema["operators"][kind]:
            compile_predicate({"all": [{"field": field, "op": op, "value": sample_value(kind, op)}]})


def test_the_attribute_key_pattern_is_the_servers():
    [key] = next(p for p in builder_schema()["patterns"] if p["pattern"] == "attributes.<key>")["params"]
    assert re.match(key["regex"], "country") and not re.match(key["regex"], "9lives")
    with pytest.raises(ValidationError, match=r"all\[0\]\.field: an attribute key"):
        compile_predicate({"all": [{"field": "attributes.9lives", "op": "eq", "value": 1}]})
