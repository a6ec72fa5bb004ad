"""The Gradio face of FramePack: the tab over a `JobService` (`framepack.ui.tab`, which imports gradio: import it
lazily where gradio may be missing)."""

from __future__ import annotations


def create_tab(*args, **kwargs):
    """See framepack.ui.tab.create_tab."""
    from framepack.ui.tab import create_tab as _create_tab

    return _create_tab(*args, **kwargs)


__all__ = ["create_tab"]
