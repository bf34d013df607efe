"""Rendering notification templates (Django template language) per channel and locale.

Templates are compiled once and cached by (template id, updated_at), so the dispatcher renders
thousands of messages a second without re-parsing. Text fields render without autoescaping; email
HTML is autoescaped.
"""

from functools import lru_cache
from typing import Any

import orjson
from django.core.exceptions import ValidationError
from django.template import Context, Engine, Template, TemplateSyntaxError

from notifications.channels import Channel
from notifications.dispatch.template_fastpath import PlainTemplate, plain_template

_TEXT_ENGINE = Engine(autoescape=False, string_if_invalid="")
_HTML_ENGINE = Engine(autoescape=True, string_if_invalid="")

#: Which template fields each channel renders, and with which engine.
CHANNEL_FIELDS: dict[str, tuple[tuple[str, Engine], ...]] = {
    Channel.EMAIL: (("subject", _TEXT_ENGINE), ("body", _TEXT_ENGINE), ("html", _HTML_ENGINE)),
    Channel.PUSH: (("title", _TEXT_ENGINE), ("body", _TEXT_ENGINE)),
    Channel.INAPP: (("title", _TEXT_ENGINE), ("body", _TEXT_ENGINE)),
    Channel.SMS: (("body", _TEXT_ENGINE),),
    Channel.WEBHOOK: (("payload", _TEXT_ENGINE),),
}

SMS_MAX_CHARS = 1600  # Twilio's limit for one message body (10 segments)


class RenderError(Exception):
    """A template could not be rendered for this message (bad data or a broken template)."""


@lru_cache(maxsize=4096)
def _compile(source: str, html: bool) -> tuple[Template, PlainTemplate | None]:
    """The Django template and, when the source is only text and plain holes, its fast form."""
    compiled = (_HTML_ENGINE if html else _TEXT_ENGINE).from_string(source)
    return compiled, plain_template(compiled, autoescape=html)


def mentions(template: Any, channel: str, name: str) -> bool:
    """Whether any of the channel's fields of ``template`` refers to ``name`` (a cheap text test,
    used to skip computing context values nobody renders)."""
    return any(name in (getattr(template, field, "") or "") for field, _ in CHANNEL_FIELDS[channel])


def locale_candidates(locale: str) -> list[str]:
    """'de-CH' → ['de-ch', 'de', '']: the most specific template wins, '' is the fallback."""
    locale = (locale or "").lower().replace("_", "-")
    candidates = []
    while locale:
        candidates.append(locale)
        locale = locale.rpartition("-")[0]
    candidates.append("")
    return candidates


def render_fields(template: Any, channel: str, context: dict[str, Any]) -> dict[str, Any]:
    """Render the channel's fields of `template` (a NotificationTemplate or similar) with `context`."""
    return FieldsRenderer(template, channel).render(context)


class FieldsRenderer:
    """:func:`render_fields` for one template and channel, with the per-template work (reading the
    fields, finding their compiled forms) done once: the dispatcher keeps one per batch, template
    and channel and renders thousands of messages with it. A field that does not compile fails each
    :meth:`render` with its :class:`RenderError`, in field order, exactly as :func:`render_fields`."""

    __slots__ = ("channel", "fields")

    def __init__(self, template: Any, channel: str) -> None:
        self.channel = channel
        #: (field, html, compiled, fast form, compile error message)
        self.fields: list[tuple[str, bool, Template | None, PlainTemplate | None, str | None]] = []
        for field, engine in CHANNEL_FIELDS[channel]:
            source = getattr(template, field, "") or ""
            if not source:
                continue
            html = engine is _HTML_ENGINE
            try:
                compiled, plain = _compile(source, html)
            except TemplateSyntaxError as exc:
                self.fields.append((field, html, None, None, f"{field}: {exc}"))
            except Exception as exc:  # reported by every render, as render_fields does
                self.fields.append((field, html, None, None, f"{field}: {type(exc).__name__}: {exc}"))
            else:
                self.fields.append((field, html, compiled, plain, None))

    def render(self, context: dict[str, Any]) -> dict[str, Any]:
        ctx: Context | None = None  # only built when a field needs Django's renderer
        out: dict[str, Any] = {}
        for field, html, compiled, plain, error in self.fields:
            if error is not None:
                raise RenderError(error)
            try:
                rendered = plain.render(context) if plain is not None else None
                if rendered is None:
                    if ctx is None:
                        ctx = Context(context, autoescape=False)
                    ctx.autoescape = html
                    rendered = compiled.render(ctx)  # type: ignore[union-attr]
                out[field] = rendered
            except TemplateSyntaxError as exc:
                raise RenderError(f"{field}: {exc}") from exc
            except Exception as exc:  # a filter raising on unexpected data is the data's fault, not ours
                raise RenderError(f"{field}: {type(exc).__name__}: {exc}") from exc
        channel = self.channel
        if channel == Channel.WEBHOOK:
            out["payload"] = _parse_webhook_payload(out.get("payload"), context)
        if channel == Channel.SMS and len(out.get("body", "")) > SMS_MAX_CHARS:
            raise RenderError(f"body: SMS text is {len(out['body'])} characters; the limit is {SMS_MAX_CHARS}")
        return out


def _parse_webhook_payload(rendered: str | None, context: dict[str, Any]) -> Any:
    if not rendered:
        return {"type": context.get("event", {}).get("type"), "data": context.get("data", {})}
    try:
        return orjson.loads(rendered)
    except orjson.JSONDecodeError as exc:
        raise RenderError(f"payload: rendered webhook payload is not JSON ({exc})") from exc


def build_context(*, data: dict[str, Any], event: dict[str, Any], user: dict[str, Any], extra=None) -> dict:
    """Template context: the event's data at the top level and under `data`, plus event and user."""
    context = dict(data)
    context.update({"data": data, "event": event, "user": user})
    if extra:
        context.update(extra)
    return context


def validate_template(template: Any) -> None:
    """Refuse a template that does not compile or render with its type's sample payload."""
    ntype = template.notification_type
    sample = ntype.sample_payload or {}
    context = build_context(
        data=sample,
        event={"id": "00000000-0000-0000-0000-000000000000", "type": ntype.key, "occurred_at": ""},
        user={"id": 1, "username": "sample", "first_name": "Sam", "email": "sam@example.com"},
        extra={"unsubscribe_url": "https://example.com/unsubscribe/sample"},
    )
    _compile.cache_clear()
    try:
        render_fields(template, template.channel, context)
    except RenderError as exc:
        field, _, message = str(exc).partition(": ")
        field = field if field in {f for f, _ in CHANNEL_FIELDS[template.channel]} else "__all__"
        raise ValidationError({field: f"Template does not render with the sample payload: {message}"}) from exc
