"""Optional HTTP Basic or Bearer-token protection of every route, as a FastAPI dependency.

The standalone server binds 127.0.0.1 by default; anyone exposing it further should set `--auth user:pass` or
`--token TOKEN`. Comparisons are constant-time (`secrets.compare_digest`) and the user and password are always
both compared, so timing does not tell which one was wrong. Under SD.Next the host's own API auth applies instead.
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the dependency's Annotated[...] parameters,
# which name schemes local to `auth_dependency`.
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer

from .errors import ApiError

REALM = "framepack"


@dataclass(frozen=True)
class Credentials:
    """What the server accepts: a user and password (HTTP Basic), a bearer token, or both."""

    basic: tuple[str, str] | None = None
    token: str | None = None

    @classmethod
    def from_options(cls, auth: str | None = None, token: str | None = None) -> "Credentials | None":
        """'user:pass' and/or a token -> Credentials; None when neither is set."""
        basic = None
        if auth:
            user, sep, password = auth.partition(":")
            if not sep or not user or not password:
                raise ValueError("--auth must be USER:PASSWORD with both parts non-empty")
            basic = (user, password)
        if token is not None and not token.strip():
            raise ValueError("--token must not be empty")
        return cls(basic, token) if basic or token else None

    def challenge(self) -> str:
        return f'Basic realm="{REALM}"' if self.basic else f'Bearer realm="{REALM}"'


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def auth_dependency(credentials: Credentials) -> Callable[..., Awaitable[None]]:
    """A dependency that lets a request through with the right Basic credentials or bearer token, else 401
    with a JSON error and a WWW-Authenticate challenge."""
    basic_scheme = HTTPBasic(realm=REALM, auto_error=False)
    bearer_scheme = HTTPBearer(auto_error=False)

    async def require_credentials(
        basic: Annotated[HTTPBasicCredentials | None, Depends(basic_scheme)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    ) -> None:
        if credentials.token and bearer is not None and _same(bearer.credentials, credentials.token):
            return
        if credentials.basic and basic is not None:
            user_ok = _same(basic.username, credentials.basic[0])
            password_ok = _same(basic.password, credentials.basic[1])
            if user_ok and password_ok:
                return
        raise ApiError(
            401, "unauthorized", "credentials missing or wrong", headers={"WWW-Authenticate": credentials.challenge()}
        )

    return require_credentials
