"""Small shims over the differences between Gradio 3.43 (SD.Next's host) and current Gradio (standalone).

Everything in the tab that differs between the two goes through here:

- component keyword arguments: `sources=[...]` (current) vs `source="..."` (3.x), a table's `column_count` (6+)
  vs `col_count`; arguments one version does not know (`buttons`, `allow_custom_value`, `minimum` on Number,
  `columns`...) are dropped, not passed;
- event listeners: `js=` (current) vs `_js=` (3.x); `queue=False` for instant handlers;
- a handler run every few seconds: `gr.Timer` (current) vs `Blocks.load(every=...)` (3.x);
- `Blocks.queue`: `default_concurrency_limit` (4+) vs `concurrency_count` (3.x);
- file inputs: a path string (4+) vs a tempfile wrapper with `.name` (3.x);
- mounting into a FastAPI app (`allowed_paths` only where supported);
- who a request's login cookies belong to (`session_user_reader`), for the server's guard in front of the tab;
- interface texts current Gradio lacks a translation for (`fill_translations`).
"""

from __future__ import annotations

import inspect
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gradio as gr

GRADIO_VERSION = tuple(int(part) for part in gr.__version__.split(".")[:2] if part.isdigit())
GRADIO_MAJOR = GRADIO_VERSION[0] if GRADIO_VERSION else 0
LEGACY = GRADIO_MAJOR < 4  # Gradio 3.x (SD.Next ships 3.43.2)


def _accepted(callable_: Any) -> set[str] | None:
    """Keyword names a constructor/function accepts, None when it takes **kwargs of any name we should trust."""
    try:
        parameters = inspect.signature(callable_).parameters
    except (TypeError, ValueError):
        return None
    return {name for name, parameter in parameters.items() if parameter.kind is not parameter.VAR_KEYWORD}


def component(cls: type, **kwargs: Any) -> Any:
    """Create a Gradio component, translating or dropping keyword arguments the installed version lacks."""
    if "sources" in kwargs and LEGACY:
        sources = kwargs.pop("sources")
        if sources:
            kwargs["source"] = sources[0]
    accepted = _accepted(cls.__init__)
    if "col_count" in kwargs and accepted is not None and "column_count" in accepted:  # Gradio 6 renamed it
        kwargs["column_count"] = kwargs.pop("col_count")
    if accepted is not None:
        kwargs = {name: value for name, value in kwargs.items() if name in accepted}
    return cls(**kwargs)


def on(
    event: Any,
    fn: Any,
    inputs: Any = None,
    outputs: Any = None,
    *,
    js: str | None = None,
    queue: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Attach `fn` to an event listener (e.g. `button.click`) on either Gradio; returns what the listener returns
    (a dependency that supports `.then` on both)."""
    arguments: dict[str, Any] = {"fn": fn, "inputs": inputs, "outputs": outputs, **kwargs}
    if js is not None:
        arguments["_js" if LEGACY else "js"] = js
    if queue is not None:
        arguments["queue"] = queue
    accepted = _accepted(event)
    if accepted is not None:
        arguments = {name: value for name, value in arguments.items() if name in accepted}
    return event(**arguments)


def every(blocks: gr.Blocks, seconds: float, fn: Any, inputs: Any = None, outputs: Any = None) -> Any:
    """Run `fn` every `seconds` while the page is open (inside `blocks`' context); needs the queue on 3.x."""
    if hasattr(gr, "Timer"):
        return on(gr.Timer(seconds).tick, fn, inputs, outputs, show_progress="hidden")
    return on(blocks.load, fn, inputs, outputs, every=seconds, show_progress="hidden")


# Keys current Gradio's interface uses without an English text, shown raw otherwise ("common.complete" is what a
# screen reader is told, and what flashes on the page, when an event ends).
MISSING_TRANSLATIONS = {"common.complete": "Complete"}


def fill_translations(blocks: gr.Blocks) -> None:
    """Give `blocks` the texts of MISSING_TRANSLATIONS where Gradio has custom translations (`gr.I18n`); a
    translation the blocks have already wins."""
    if not hasattr(gr, "I18n"):
        return
    existing = getattr(getattr(blocks, "i18n_instance", None), "translations_dict", None) or {}
    merged = {locale: dict(texts) for locale, texts in existing.items()}
    merged["en"] = {**MISSING_TRANSLATIONS, **merged.get("en", {})}
    blocks.i18n_instance = gr.I18n(**merged)


def update(**kwargs: Any) -> Any:
    """`gr.update` (present on both): a partial change of a component's properties or value."""
    return gr.update(**kwargs)


def enable_queue(blocks: gr.Blocks, concurrency: int = 2) -> gr.Blocks:
    """Turn the queue on (generator handlers stream through it on both versions)."""
    if LEGACY:
        blocks.queue(concurrency_count=concurrency, api_open=False)
    else:
        blocks.queue(default_concurrency_limit=concurrency)
    return blocks


def file_path(value: Any) -> Path | None:
    """The local path of a gr.File value: a str/Path (4+), a tempfile wrapper with `.name` (3.x) or a dict."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return file_path(value[0]) if value else None
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    elif not isinstance(value, (str, Path)):
        value = getattr(value, "name", None) or getattr(value, "path", None)
    return Path(value) if value else None


def file_url(path: Path) -> str:
    """The URL under which Gradio serves a file of an allowed folder (`/gradio_api/file=` since 4.x, `/file=` in
    3.x), relative to the app's root."""
    prefix = "file=" if LEGACY else "gradio_api/file="
    return f"{prefix}{urllib.parse.quote(str(path))}"


def mount(
    app: Any,
    blocks: gr.Blocks,
    path: str = "/",
    allowed_paths: list[str] | None = None,
    auth: tuple[str, str] | None = None,
) -> Any:
    """Mount the tab into a FastAPI app (`gr.mount_gradio_app`); `allowed_paths` and `auth` where the version
    has them (a version without `auth` gets the tab unmounted rather than open: RuntimeError)."""
    arguments: dict[str, Any] = {"app": app, "blocks": blocks, "path": path}
    if auth:
        if "auth" not in (_accepted(gr.mount_gradio_app) or set()):
            raise RuntimeError("this Gradio cannot protect a mounted app with a login")
        arguments["auth"] = auth
    if allowed_paths:
        arguments["allowed_paths"] = allowed_paths
    accepted = _accepted(gr.mount_gradio_app)
    if accepted is not None:
        arguments = {name: value for name, value in arguments.items() if name in accepted}
    return gr.mount_gradio_app(**arguments)


def session_user_reader(gradio_app: Any) -> Callable[[Mapping[str, str]], str | None]:
    """A function from a request's cookies to the user of a valid login session of the mounted `gradio_app`, or
    None. Current Gradio names its cookies `access-token-<cookie_id>` and `access-token-unsecure-<cookie_id>`,
    3.x `access-token` and `access-token-unsecure`; both keep the valid tokens in `app.tokens` (token -> user).
    RuntimeError when this Gradio keeps them elsewhere: the caller must not serve the tab unguarded."""
    if not isinstance(getattr(gradio_app, "tokens", None), dict):
        raise RuntimeError("this Gradio keeps its login sessions where the server cannot check them")
    cookie_id = getattr(gradio_app, "cookie_id", None)
    suffix = f"-{cookie_id}" if cookie_id else ""
    names = [f"access-token{suffix}", f"access-token-unsecure{suffix}"]

    def user(cookies: Mapping[str, str]) -> str | None:
        tokens = gradio_app.tokens  # read each time: Gradio may replace the dict
        for name in names:
            token = cookies.get(name)
            if token and token in tokens:
                return tokens[token]
        return None

    return user
