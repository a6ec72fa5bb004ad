"""FramePack video generation: the engine (request, plan, models, sampling, generate, video, jobs, record) and
three of its faces, the CLI (`framepack.cli`), the Gradio tab (`framepack.ui`) and the host adapter
(`framepack.host`).

The engine modules import neither Gradio, FastAPI nor SD.Next's `modules.*`. Those are imported by the faces:
`framepack.ui` (Gradio), `framepack.host` (SD.Next's modules and Gradio, inside its SD.Next adapter's methods),
`framepack.degraded` (Gradio or Starlette, inside its functions), the CLI's `serve` command (`api/`, FastAPI,
when it runs), and `api/` and `scripts/` outside this package.
"""

__version__ = "0.1.0"
