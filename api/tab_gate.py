"""The guard in front of the Gradio tab that the standalone server mounts at "/" (`framepack.serve.mount_tab`).

Every request routed to the mounted Gradio app passes through `TabGate` first:

- **Unknown paths and methods** answer the API's error shape (404 `not_found`, 405 `method_not_allowed`), not
  Gradio's `{"detail": "Not Found"}`. A path the REST routes know with another method is a 405 as well.
- **Login** (with `serve --auth`): without a valid Gradio session only the login page and its static assets
  answer (`PUBLIC_PATHS`, `PUBLIC_PREFIXES`, `POST /login`); everything else, Gradio's state-changing routes
  included (reset, cancel, queue join, upload, heartbeat, startup-events...), answers 401. The page served before
  login carries no API description: Gradio embeds one in every page it renders, so the gate replaces it with an
  empty one (no endpoints); after login the page is rendered again, with it. Failed logins are limited per
  client address (`LoginLimiter`: 10 a minute by default, then 429 with Retry-After).
- **Files**: Gradio's file route (`/gradio_api/file=PATH`) never serves a hidden file: a path whose file name, or
  whose part below an output folder, starts with "." (temporary `.name.partial.*` outputs are hidden) is a 404,
  checked on the path as given and on its real path (symlinks resolved). `allowed_paths` alone is a folder
  allowlist and would serve them.

The gate knows no Gradio internals: it gets the mounted app's routes and a function that says whose session a
request's cookies carry (`framepack.ui.compat.session_user_reader`).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from starlette.requests import cookie_parser
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

logger = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/", "/theme.css", "/favicon.ico", "/robots.txt"})  # GET/HEAD before login
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/")  # the page's scripts, styles and fonts (GET/HEAD)
LOGIN_PATHS = frozenset({"/login", "/login/"})  # POST
PAGE_PATHS = frozenset({"/"})  # rendered pages: their API description is removed before login
FILE_ROUTE_PREFIXES = ("/gradio_api/file=", "/gradio_api/file/", "/file=", "/file/")  # current Gradio, then 3.x
API_INFO_SCRIPT = re.compile(rb"(window\.gradio_api_info\s*=\s*).*?(;?\s*</script>)", re.S)
EMPTY_API_INFO = b'{"named_endpoints": {}, "unnamed_endpoints": {}}'  # what the page's script gets instead
API_INFO_MARKERS = (b"python_type", b"parameter_name", b"code_snippets")  # keys of a description of endpoints
READ_METHODS = frozenset({"GET", "HEAD"})

LOGIN_FAILURES_ALLOWED = 10
LOGIN_WINDOW_SECONDS = 60.0
TRACKED_CLIENTS = 10_000  # failed-login histories kept at most (oldest dropped), so many addresses cannot fill memory


class LoginLimiter:
    """At most `limit` failed logins per client address in any `window_s` seconds; past it, refuse for the rest of
    the window. Used on the event loop only."""

    def __init__(
        self,
        limit: int = LOGIN_FAILURES_ALLOWED,
        window_s: float = LOGIN_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def retry_after(self, client: str) -> int | None:
        """Seconds `client` must wait before its next login attempt, or None when it may try now."""
        failures = self._recent(client)
        if len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[0] + self.window_s - self._clock()))

    def failed(self, client: str) -> None:
        failures = self._recent(client)
        failures.append(self._clock())
        self._failures[client] = failures
        self._failures.move_to_end(client)
        while len(self._failures) > TRACKED_CLIENTS:
            self._failures.popitem(last=False)

    def _recent(self, client: str) -> collections.deque[float]:
        failures = self._failures.get(client, collections.deque())
        cutoff = self._clock() - self.window_s
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            self._failures.pop(client, None)
        return failures


def route_path(scope: Scope) -> str:
    """The request path below the mount point (`scope["path"]` holds the full path, `root_path` the mount)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


def hidden_file(path: str, roots: Sequence[Path]) -> bool:
    """Whether `path` (absolute, or relative to the working folder), as given or with its symlinks resolved,
    names a hidden file: its file name starts with ".", or a part of it below one of `roots` does."""
    candidates = {os.path.abspath(path), os.path.realpath(path)}
    real_roots = {os.path.realpath(root) for root in roots} | {os.path.abspath(root) for root in roots}
    for candidate in candidates:
        if os.path.basename(candidate).startswith("."):
            return True
        for root in real_roots:
            if candidate != root and os.path.commonpath([root, candidate]) == root:
                if any(part.startswith(".") for part in Path(os.path.relpath(candidate, root)).parts):
                    return True
    return False


def _headers(scope: Scope) -> Mapping[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", ())}


class TabGate:
    """ASGI middleware in front of the mounted Gradio app; see the module docstring.

    `routes` are the Gradio app's routes (what it answers), `other_routes` the REST app's own (a path they know
    with another method is a 405, not a 404). `session_user` (None: no login configured) maps a request's
    cookies to the user of a valid Gradio session, or None. `file_roots` are the output folders Gradio serves.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Callable[[], Iterable[BaseRoute]],
        other_routes: Callable[[], Iterable[BaseRoute]] = tuple,
        session_user: Callable[[Mapping[str, str]], str | None] | None = None,
        file_roots: Sequence[Path] = (),
        login_limiter: LoginLimiter | None = None,
    ):
        self.app = app
        self._routes, self._other_routes = routes, other_routes
        self._session_user = session_user
        self._file_roots = [Path(root) for root in file_roots]
        self._limiter = login_limiter or LoginLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        method = scope.get("method", "GET")
        match = self._match(self._routes(), scope)
        if match != Match.FULL:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            if match == Match.PARTIAL or self._match(self._other_routes(), scope) != Match.NONE:
                await error_response(405, "method_not_allowed", f"{method} is not allowed on {path}")(
                    scope, receive, send
                )
                return
            await error_response(404, "not_found", f"no route {path}")(scope, receive, send)
            return

        signed_in = True
        if self._session_user is not None:
            cookies = cookie_parser(_headers(scope).get("cookie", ""))
            signed_in = self._session_user(cookies) is not None
        if self._session_user is not None and path in LOGIN_PATHS and method == "POST":
            await self._login(scope, receive, send)
            return
        if not signed_in:
            public = method in READ_METHODS and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))
            if not public:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await error_response(401, "unauthorized", "sign in first: this needs a session of the tab")(
                    scope, receive, send
                )
                return
            if path in PAGE_PATHS:
                await self._page_without_api_info(scope, receive, send)
                return
        if path.startswith(FILE_ROUTE_PREFIXES):
            requested = next(path[len(prefix) :] for prefix in FILE_ROUTE_PREFIXES if path.startswith(prefix))
            if hidden_file(requested, self._file_roots):
                await error_response(404, "not_found", "no such file", "path")(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _match(routes: Iterable[BaseRoute], scope: Scope) -> Match:
        best = Match.NONE
        for route in routes:
            match, _ = route.matches(dict(scope))  # a copy: some routers note what they tried in the scope
            if match == Match.FULL:
                return match
            if match == Match.PARTIAL:
                best = match
        return best

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward a login unless this client failed too often; count the answers that refuse it."""
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = self._limiter.retry_after(client)
        if wait is not None:
            logger.warning("login attempts from %s refused for %d s: too many failures", client, wait)
            message = f"too many failed logins; try again in {wait} s"
            await error_response(429, "rate_limited", message, headers={"Retry-After": str(wait)})(scope, receive, send)
            return

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                self._limiter.failed(client)
            await send(message)

        await self.app(scope, receive, watching_send)

    async def _page_without_api_info(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the login page with its embedded API description emptied (asked uncompressed, so that it can be
        edited). A page that still describes endpoints afterwards (a Gradio that embeds it elsewhere) is not
        served: 500."""
        headers = [(name, value) for name, value in scope.get("headers", ()) if name != b"accept-encoding"]
        start: Message = {}
        body = bytearray()

        async def buffering_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await self.app({**scope, "headers": headers}, receive, buffering_send)
        page = API_INFO_SCRIPT.sub(lambda match: match[1] + EMPTY_API_INFO + match[2], bytes(body))
        if not start or any(marker in page for marker in API_INFO_MARKERS):
            logger.error("the tab's login page still describes its API after the gate removed it; not serving it")
            await error_response(500, "internal", "the login page could not be served; see the server log")(
                scope, receive, send
            )
            return
        response_headers = [(name, value) for name, value in start.get("headers", []) if name != b"content-length"]
        if scope.get("method") != "HEAD":
            response_headers.append((b"content-length", str(len(page)).encode()))
        await send({**start, "headers": response_headers})
        await send({"type": "http.response.body", "body": page if scope.get("method") != "HEAD" else b""})
