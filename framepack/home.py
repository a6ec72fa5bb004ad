"""Where generated data lives: the self-test model, RIFE weights."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """FRAMEPACK_HOME, else ~/.cache/framepack."""
    return Path(os.environ.get("FRAMEPACK_HOME") or Path.home() / ".cache" / "framepack")
