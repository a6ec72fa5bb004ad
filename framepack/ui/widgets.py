"""Inputs that never fail an event: Gradio refuses some values itself, before any handler runs (a number outside
the component's bounds, an upload that is not an image), and then turns every output of the event into a red
"Error" and logs a traceback. `tolerant` makes a component hand such values to the handlers instead, which refuse
them with one message naming the field (the request model's bounds, "not a readable image"):

- Number and Slider: an out-of-bounds value passes as the number it is;
- Image: an unreadable upload passes as `framepack.ui.controls.UnreadableImage`.

Only the component object is changed (its own `preprocess`), never a Gradio class: a subclass would make Gradio
write a `.pyi` stub beside this file at import time. Works on Gradio 3.43 and current Gradio alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from framepack.ui import compat
from framepack.ui.controls import UnreadableImage

logger = logging.getLogger(__name__)


def _as_number(payload: Any, _error: Exception) -> Any:
    """The payload as a number when it is one, else as it is (the request model refuses it by name)."""
    try:
        return float(payload)
    except (TypeError, ValueError):
        return payload


def _unreadable(_payload: Any, error: Exception) -> UnreadableImage:
    return UnreadableImage(str(error))


def tolerant(component: Any) -> Any:
    """`component` with a `preprocess` that answers Gradio's own refusal with the value a handler can refuse by
    name (see the module docstring); other components are returned as they are."""
    if isinstance(component, gr.Image):
        fallback: Callable[[Any, Exception], Any] = _unreadable
    elif isinstance(component, (gr.Number, gr.Slider)):
        fallback = _as_number
    else:
        return component
    original = component.preprocess

    def preprocess(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the handler refuses the value, naming the field
            logger.info("%s refused a value (%s); its handler says why", component.elem_id, error)
            return fallback(args[0] if args else next(iter(kwargs.values()), None), error)

    component.preprocess = preprocess
    return component


def tolerant_component(cls: type, **kwargs: Any) -> Any:
    """`compat.component`, made `tolerant`: the component factory the tab builds its inputs with."""
    return tolerant(compat.component(cls, **kwargs))
