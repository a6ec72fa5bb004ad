#!/usr/bin/env bash
# Set up a real SD.Next on a CPU-only machine, for tests/test_sdnext_real.py (FRAMEPACK_SDNEXT_ROOT=SDNEXT_ROOT).
#
#   tests/sdnext/setup-sdnext.sh SDNEXT_ROOT
#
# Idempotent: run it again to repair or finish a setup; steps that are done are skipped or are pip no-ops.
# Put SDNEXT_ROOT outside this repository. What it does, and why:
#  1. Clones SD.Next into SDNEXT_ROOT (a git checkout: in a non-git folder, or with --skip-git, SD.Next's launch is
#     "quick" and runs no extension installer). An existing checkout is used as it is.
#  2. Submodules (modern UI, kanvas, chaiNNer, wiki): SD.Next clones them from GitHub at every full start. Where
#     GitHub cannot be reached they are marked `update = none` in the checkout's git config, so that start logs no
#     git error, and config.json gets the Standard theme (the default Modern theme lives in a submodule).
#  3. Its own venv (SDNEXT_ROOT/venv), with torch==2.13.0 installed first (the CPU wheel; any other spec pulls GBs
#     of CUDA wheels), and a pip constraint file pinning torch and torchvision that every later pip call gets
#     through PIP_CONSTRAINT, so neither SD.Next's installer nor an extension's can replace them.
#  4. torchvision 0.28.0 --no-deps (the registry wheel is a CUDA build: its import fails on a CPU torch with
#     "operator torchvision::nms does not exist"), with the nms/qnms fake registrations in _meta_registrations.py
#     guarded by torchvision.extension._has_ops().
#  5. diffusers and transformers releases (SD.Next pins git commits, which need GitHub; it accepts other versions
#     when started with --experimental), plus SD.Next's requirements.txt (minus its setuptools pin, which conflicts
#     with torch 2.13's setuptools>=77 in one resolve; SD.Next installs it itself at start).
#  6. One full start of SD.Next (it installs gradio 3.43.2, onnx, compel, opencv, scipy, ... itself), then stops it.
#
# Environment (all optional):
#   PYTHON              interpreter for the venv (default python3; SD.Next wants 3.10-3.13)
#   SDNEXT_REPO         where to clone from (default https://github.com/vladmandic/sdnext; a local mirror works)
#   SDNEXT_COMMIT       commit to check out after cloning (default 058a7f0cf, the one this was checked on)
#   SDNEXT_SUBMODULES   auto (default: skip them when GitHub is unreachable), init (leave them to SD.Next), skip
#   SDNEXT_PORT         port of the first start (default 17899)
#   DIFFUSERS_VERSION / TRANSFORMERS_VERSION / TOKENIZERS_VERSION   releases closest to SD.Next's pinned commits
#
# Then start it yourself with:
#   cd SDNEXT_ROOT && PIP_CONSTRAINT=$PWD/venv/framepack-pip-constraint.txt venv/bin/python launch.py \
#       --experimental --skip-torch --use-cpu all --server-name 127.0.0.1 --port 7860
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 SDNEXT_ROOT" >&2
    exit 2
fi
ROOT=$(realpath -m "$1")
PYTHON=${PYTHON:-python3}
SDNEXT_REPO=${SDNEXT_REPO:-https://github.com/vladmandic/sdnext}
SDNEXT_COMMIT=${SDNEXT_COMMIT:-058a7f0cf}
SDNEXT_SUBMODULES=${SDNEXT_SUBMODULES:-auto}
SDNEXT_PORT=${SDNEXT_PORT:-17899}
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0
DIFFUSERS_VERSION=${DIFFUSERS_VERSION:-0.39.0}         # SD.Next 058a7f0 pins diffusers 0.39.0.dev0 (a commit)
TRANSFORMERS_VERSION=${TRANSFORMERS_VERSION:-5.13.1}   # ... and transformers 5.13.0.dev0 (a commit)
TOKENIZERS_VERSION=${TOKENIZERS_VERSION:-0.22.2}       # ... and tokenizers 0.22.2

step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

step "1. SD.Next checkout at $ROOT"
if [ ! -d "$ROOT/.git" ]; then
    if [ -e "$ROOT" ] && [ -n "$(ls -A "$ROOT" 2>/dev/null)" ]; then
        echo "$ROOT exists and is not a git checkout: SD.Next would skip extension installers there" >&2
        exit 1
    fi
    git clone "$SDNEXT_REPO" "$ROOT"
    if [ -n "$SDNEXT_COMMIT" ]; then
        git -C "$ROOT" checkout -q -B master "$SDNEXT_COMMIT"
    fi
fi
git -C "$ROOT" log --oneline -1

step "2. Submodules ($SDNEXT_SUBMODULES)"
mode=$SDNEXT_SUBMODULES
if [ "$mode" = auto ]; then
    first_url=$(git -C "$ROOT" config -f .gitmodules --get-regexp '^submodule\..*\.url$' | head -1 | cut -d' ' -f2)
    if timeout 20 git ls-remote --exit-code "$first_url" HEAD >/dev/null 2>&1; then
        mode=init
    else
        echo "GitHub is not reachable ($first_url): submodules are skipped"
        mode=skip
    fi
fi
if [ "$mode" = skip ]; then
    git -C "$ROOT" config -f .gitmodules --get-regexp '^submodule\..*\.path$' | while read -r key path; do
        name=${key#submodule.}
        name=${name%.path}
        if [ -z "$(ls -A "$ROOT/$path" 2>/dev/null)" ]; then
            git -C "$ROOT" config "submodule.$name.update" none
            echo "submodule $name: update = none"
        fi
    done
fi

step "3. venv with torch==$TORCH_VERSION"
if [ ! -x "$ROOT/venv/bin/python" ]; then
    "$PYTHON" -m venv "$ROOT/venv"
fi
PY="$ROOT/venv/bin/python"
CONSTRAINT="$ROOT/venv/framepack-pip-constraint.txt"
printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" > "$CONSTRAINT"
export PIP_CONSTRAINT="$CONSTRAINT"
installed() { "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1').split('+')[0] != '$2')" 2>/dev/null; }
if ! installed torch "$TORCH_VERSION"; then
    "$PY" -m pip install "torch==$TORCH_VERSION"
fi

step "4. torchvision==$TORCHVISION_VERSION (--no-deps, CPU-safe import)"
if ! installed torchvision "$TORCHVISION_VERSION"; then
    "$PY" -m pip install --no-deps "torchvision==$TORCHVISION_VERSION"
fi
"$PY" - <<'EOF'
import importlib.util
import pathlib

path = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0]) / "_meta_registrations.py"
text = path.read_text()
for op in ("nms", "qnms"):
    old = f'@torch.library.register_fake("torchvision::{op}")\n'
    new = f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops() else (lambda fn: fn))\n'
    text = text.replace(old, new)
path.write_text(text)
EOF

step "5. diffusers==$DIFFUSERS_VERSION transformers==$TRANSFORMERS_VERSION and SD.Next's requirements"
grep -v -i '^setuptools' "$ROOT/requirements.txt" > "$ROOT/venv/framepack-sdnext-requirements.txt"
(cd "$ROOT" && "$PY" -m pip install -q -r venv/framepack-sdnext-requirements.txt -c constraints.txt \
    "diffusers==$DIFFUSERS_VERSION" "transformers==$TRANSFORMERS_VERSION" "tokenizers==$TOKENIZERS_VERSION")
"$PY" -c "import torch, torchvision, diffusers, transformers
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'diffusers', diffusers.__version__,
      'transformers', transformers.__version__)"

step "6. Standard theme when the Modern UI submodule is missing"
if [ -z "$(ls -A "$ROOT/extensions-builtin/sdnext-modernui" 2>/dev/null)" ]; then
    "$PY" - "$ROOT/config.json" <<'EOF'
import json
import pathlib
import sys

path = pathlib.Path(sys.argv[1])
config = json.loads(path.read_text()) if path.is_file() else {}
config.update({"theme_type": "Standard", "gradio_theme": "black-teal"})
path.write_text(json.dumps(config, indent=2))
print(f"{path}: theme_type=Standard")
EOF
fi

step "7. First start of SD.Next (it finishes its own install), then stop"
LOG="$ROOT/venv/framepack-first-start.log"
HOST_LOG="$ROOT/venv/framepack-first-start-sdnext.log"
rm -f "$HOST_LOG"
(cd "$ROOT" && exec "$PY" launch.py --log "$HOST_LOG" --experimental --skip-torch --use-cpu all --server-name 127.0.0.1 \
    --port "$SDNEXT_PORT") > "$LOG" 2>&1 &
pid=$!
ready=0
for _ in $(seq 1 360); do  # up to 30 min: the first start installs gradio, onnx, opencv, ... on a slow machine
    if ! kill -0 "$pid" 2>/dev/null; then
        break
    fi
    if curl -fs -o /dev/null "http://127.0.0.1:$SDNEXT_PORT/sdapi/v1/version"; then
        ready=1
        break
    fi
    sleep 5
done
if [ "$ready" = 1 ]; then
    curl -fs -X POST "http://127.0.0.1:$SDNEXT_PORT/sdapi/v1/shutdown" || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
fi
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
if [ "$ready" != 1 ]; then
    echo "SD.Next did not start; see $LOG and $HOST_LOG" >&2
    tail -30 "$LOG" >&2
    exit 1
fi
echo "Errors SD.Next logged (without GitHub, the branch check fails; that one is expected):"
grep -E 'ERROR|Setup complete' "$HOST_LOG" || true
echo
echo "SD.Next is ready at $ROOT. Test: FRAMEPACK_SDNEXT_ROOT=$ROOT python -m pytest -q tests/test_sdnext_real.py"
