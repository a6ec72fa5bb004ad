#!/usr/bin/env bash
# A host-like Python for tests/test_host.py: SD.Next's stack (Gradio 3.43.2 installed --no-deps, FastAPI 0.124.4,
# Starlette 0.50.0) plus this project's requirements, in .venv-host/. The test finds it there (or through
# FRAMEPACK_HOST_PYTHON) and runs the fake SD.Next in it; without it the Gradio-tab part of that test is skipped.
# Usage: .ci/host-env.sh [python3]   (SD.Next runs on Python 3.10-3.12; 3.11 was seen working)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON="${1:-python3}"
rm -rf .venv-host
"$PYTHON" -m venv .venv-host
PIP=".venv-host/bin/pip"
"$PIP" install -q torch==2.13.0
# the project's requirements but the current Gradio (SD.Next's 3.43.2 comes next, without its dependencies)
grep -v '^gradio' requirements.txt > .venv-host/requirements-host.txt
"$PIP" install -q -r .venv-host/requirements-host.txt
"$PIP" install -q --no-deps gradio==3.43.2 gradio_client==0.5.0
"$PIP" install -q fastapi==0.124.4 starlette==0.50.0 "pydantic>=2.7,<3" "uvicorn==0.54.*" "numpy==2.1.*" \
    "websockets<12" aiofiles altair ffmpy pydub semantic-version matplotlib python-multipart importlib_resources \
    orjson pandas pyyaml jinja2 markupsafe requests huggingface_hub fsspec packaging typing_extensions httpx
.venv-host/bin/python -c "import gradio, fastapi; assert gradio.__version__ == '3.43.2', gradio.__version__; print('host-like env: gradio', gradio.__version__, 'fastapi', fastapi.__version__)"
