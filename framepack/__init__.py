"""FramePack video generation engine: request, plan, models, sampling and video output.

The engine never imports Gradio, FastAPI or SD.Next; those faces live in `framepack.ui`, `api/` and `scripts/`.
"""

__version__ = "0.1.0"
