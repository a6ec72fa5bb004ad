"""Where generated data lives: the self-test model, RIFE weights, the server's job database."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """FRAMEPACK_HOME, else ~/.cache/framepack."""
    return Path(os.environ.get("FRAMEPACK_HOME") or Path.home() / ".cache" / "framepack")


def server_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data folder of `serve` (job database, checkpoints): `data_dir` when given, else FRAMEPACK_HOME/server."""
    return Path(data_dir) if data_dir else data_home() / "server"
