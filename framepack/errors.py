"""Errors that speak to the user, as opposed to bugs that deserve a traceback."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pydantic


class UserError(Exception):
    """Base of every error whose message is meant for the user (one line, says what to do)."""


class FieldError(UserError, ValueError):
    """Bad input, refused before any model work; `field` names the request field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class PlanError(FieldError):
    """A request that cannot be planned."""


def user_error_message(error: BaseException) -> str | None:
    """The one line to show for a user-facing error, None for anything else (a bug)."""
    from framepack.events import Cancelled

    if isinstance(error, Cancelled):
        return "cancelled; no partial output was kept"
    return str(error) if isinstance(error, UserError) else None


def validation_message(error: pydantic.ValidationError) -> str:
    """One line naming each field a pydantic ValidationError refuses: `field.path: message; ...` ('request' for
    the model as a whole), without pydantic's "Value error, " prefix on a validator's own message."""
    parts = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{'.'.join(str(p) for p in item['loc']) or 'request'}: {message}")
    return "; ".join(parts)
