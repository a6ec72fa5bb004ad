"""The SD.Next extension when it cannot start (a requirement missing, an import failing): a tab and REST routes
that say what is wrong and how to fix it, instead of a silent disappearance.

Imports only the standard library at module level; the tab needs gradio and the routes starlette, both part of
the host. The routes answer 503 with the API's error shape (`api.errors.ErrorResponse`), kind "not_installed".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ROUTE_PREFIX = "/sdapi/v1/framepack"  # api.routes.PREFIX (a test checks they agree)
ERROR_KIND = "not_installed"
ERROR_STATUS = 503
TITLE = "FramePack cannot start"
RESTART = "then restart SD.Next"


def unavailable_message(problems: list[str]) -> str:
    """One line for API clients: every problem (each says what, why and the fix), then what to do after."""
    return f"{TITLE}: " + "; ".join(problem.rstrip(". ") for problem in problems) + f"; {RESTART}."


def error_body(message: str) -> dict[str, Any]:
    return {"error": {"kind": ERROR_KIND, "field": None, "message": message}}


def degraded_tab(problems: list[str]) -> Any:
    """A Blocks that lists the problems (Gradio 3.43 and current)."""
    import gradio as gr

    lines = "\n".join(f"- {problem}" for problem in problems)
    with gr.Blocks(analytics_enabled=False, title="FramePack") as blocks:
        gr.Markdown(f"## {TITLE}\n\n{lines}\n\nFix the above, {RESTART}.", elem_id="framepack_unavailable")
    return blocks


def degraded_routes(message: str, prefix: str = ROUTE_PREFIX) -> list[tuple[str, Callable[..., Any], list[str]]]:
    """(path, endpoint, methods) for the route prefix and everything under it, each answering 503 with
    `message` in the error shape."""
    from starlette.responses import JSONResponse

    async def unavailable() -> JSONResponse:
        return JSONResponse(error_body(message), status_code=ERROR_STATUS)

    async def unavailable_below(rest: str) -> JSONResponse:  # noqa: ARG001 - the path does not matter
        return JSONResponse(error_body(message), status_code=ERROR_STATUS)

    methods = ["GET", "POST", "DELETE"]
    return [(prefix, unavailable, methods), (f"{prefix}/{{rest:path}}", unavailable_below, methods)]
