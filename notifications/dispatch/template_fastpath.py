"""A renderer for the simplest templates (text and filter-less ``{{ variables }}`` whose values are plain
strings), byte-for-byte what Django renders, without Django's cost; anything else returns None and the
caller renders with Django. See docs/architecture.md, "Dispatcher"."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from django.template import Template
from django.template.base import TextNode, Variable, VariableNode

__all__ = ["PlainTemplate", "plain_template"]


@dataclass(frozen=True, slots=True)
class PlainTemplate:
    """Text parts (str) and variable lookups (tuple of keys), in order."""

    parts: tuple[str | tuple[str, ...], ...]
    autoescape: bool

    def render(self, context: dict[str, Any]) -> str | None:
        """The rendered text, or None when a hole is not a plain string reached through dicts."""
        out = []
        for part in self.parts:
            if type(part) is str:
                out.append(part)
                continue
            value: Any = context
            for key in part:
                if type(value) is not dict or key not in value:
                    return None
                value = value[key]
            if type(value) is not str:
                return None
            out.append(html.escape(value) if self.autoescape else value)
        return "".join(out)


def plain_template(template: Template, *, autoescape: bool) -> PlainTemplate | None:
    """The fast form of a compiled template, or None if it uses anything but text and plain holes."""
    parts: list[str | tuple[str, ...]] = []
    for node in template.nodelist:
        if type(node) is TextNode:
            parts.append(node.s)
            continue
        if type(node) is not VariableNode:
            return None  # tags, comments, blocks...
        expression = node.filter_expression
        var = expression.var
        if expression.filters or type(var) is not Variable or var.lookups is None or var.translate:
            return None  # filters, literals, translations
        parts.append(tuple(var.lookups))
    return PlainTemplate(tuple(parts), autoescape)
