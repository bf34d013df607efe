"""Credentials held by adapters."""

from __future__ import annotations


class Secret:
    """A credential that never shows up in a repr, a log line or a traceback's locals dump."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    @classmethod
    def of(cls, value: str | Secret | None) -> Secret:
        return value if isinstance(value, Secret) else cls(value or "")
