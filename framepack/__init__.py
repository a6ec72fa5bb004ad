"""FramePack video generation: the engine (request, plan, models, sampling, generate, video, runner) and the job
service over it (`framepack.jobs`).

Neither imports Gradio, FastAPI or SD.Next (tests/test_imports.py checks it). Those are imported by the faces,
`framepack.ui` (Gradio), `api/` (FastAPI) and `scripts/` (SD.Next), and by the modules that wire the faces to
the engine: `framepack.host` (SD.Next's `modules`, and Gradio for its settings page), `framepack.degraded` (the
extension's stand-in tab and routes) and `framepack.serve` (the standalone server).
"""

__version__ = "0.1.0"
