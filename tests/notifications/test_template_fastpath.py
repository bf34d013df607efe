"""The fast renderer agrees with Django's on every template it accepts, and accepts the common ones."""

from __future__ import annotations

from django.template import Context
from django.utils.safestring import mark_safe
from hypothesis import given, settings
from hypothesis import strategies as st

from notifications.dispatch.template_fastpath import plain_template
from notifications.dispatch.templating import _HTML_ENGINE, _TEXT_ENGINE, render_fields

NAMES = ["order", "carrier", "data", "user", "x"]
TEXT = st.text(alphabet=st.characters(blacklist_characters="{}%#", blacklist_categories=("Cs",)), max_size=12)
SCALARS = st.one_of(
    st.text(alphabet="ab<>&\"' é1", max_size=6),
    st.integers(-2000, 2000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.none(),
    st.booleans(),
    st.text(alphabet="ab<>&", max_size=4).map(mark_safe),
    st.lists(st.integers(0, 3), max_size=2),
)
CONTEXTS = st.recursive(
    st.dictionaries(st.sampled_from(NAMES), SCALARS, max_size=5),
    lambda children: st.dictionaries(st.sampled_from(NAMES), st.one_of(SCALARS, children), max_size=5),
    max_leaves=12,
)
LOOKUP = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(".".join)
HOLE = st.one_of(
    LOOKUP.map(lambda name: "{{ " + name + " }}"),
    LOOKUP.map(lambda name: "{{" + name + "}}"),
    LOOKUP.map(lambda name: "{{ " + name + "|upper }}"),
    LOOKUP.map(lambda name: "{% if " + name + " %}yes{% endif %}"),
    st.just('{{ "literal" }}'),
    st.just("{# comment #}"),
)
TEMPLATES = st.lists(st.one_of(TEXT, HOLE), max_size=6).map("".join)


def _django(source: str, context: dict, *, autoescape: bool) -> str:
    engine = _HTML_ENGINE if autoescape else _TEXT_ENGINE
    return engine.from_string(source).render(Context(context, autoescape=autoescape))


@settings(max_examples=600, deadline=None)
@given(source=TEMPLATES, context=CONTEXTS, autoescape=st.booleans())
def test_fast_render_is_none_or_exactly_what_django_renders(source, context, autoescape):
    engine = _HTML_ENGINE if autoescape else _TEXT_ENGINE
    plain = plain_template(engine.from_string(source), autoescape=autoescape)
    if plain is None:
        return
    fast = plain.render(context)
    if fast is not None:
        assert fast == _django(source, context, autoescape=autoescape)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.one_of(TEXT, st.sampled_from(["order", "data.order", "data.carrier"])), max_size=6),
    values=st.fixed_dictionaries({"order": st.text(max_size=8), "carrier": st.text(max_size=8)}),
    autoescape=st.booleans(),
)
def test_text_with_plain_string_holes_takes_the_fast_path(parts, values, autoescape):
    source = "".join(p if p not in {"order", "data.order", "data.carrier"} else "{{ " + p + " }}" for p in parts)
    context = {"order": values["order"], "data": dict(values)}
    engine = _HTML_ENGINE if autoescape else _TEXT_ENGINE
    plain = plain_template(engine.from_string(source), autoescape=autoescape)
    assert plain is not None
    assert plain.render(context) == _django(source, context, autoescape=autoescape)


def test_templates_with_filters_tags_or_non_strings_fall_back_to_django():
    compiled = _TEXT_ENGINE.from_string("{{ order|upper }}")
    assert plain_template(compiled, autoescape=False) is None
    assert plain_template(_TEXT_ENGINE.from_string("{% if a %}a{% endif %}"), autoescape=False) is None
    plain = plain_template(_TEXT_ENGINE.from_string("n={{ n }}"), autoescape=False)
    assert plain is not None
    assert plain.render({"n": 1234}) is None  # numbers are localised by Django: not ours to format
    assert plain.render({}) is None  # missing: Django's string_if_invalid applies


class _Copy:
    subject = "Order {{ order }} & co"
    body = "{{ order|upper }} via {{ carrier }}"
    html = "<b>{{ order }}</b> {{ n }}"


def test_render_fields_mixes_both_paths_and_matches_django():
    context = {"order": "<A&1>", "carrier": "DHL", "n": 1234}
    out = render_fields(_Copy(), "email", context)
    assert out == {
        "subject": _django(_Copy.subject, context, autoescape=False),
        "body": _django(_Copy.body, context, autoescape=False),
        "html": _django(_Copy.html, context, autoescape=True),
    }
    assert out["subject"] == "Order <A&1> & co"
    assert out["html"].startswith("<b>&lt;A&amp;1&gt;</b>")
