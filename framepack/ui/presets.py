"""Named parameter sets in one JSON file, plus the last-used settings under a reserved name.

A preset holds request fields (JSON values, images left out); unknown fields are dropped on load, so presets
written by an older version still load.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from framepack.ui.controls import CONTROL_FIELDS

LAST_USED = "__last_used__"


class PresetError(ValueError):
    """A preset name or file that cannot be used."""


class PresetStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as error:
            raise PresetError(f"cannot read presets {self.path}: {error}") from None
        presets = data.get("presets", {}) if isinstance(data, dict) else {}
        return {str(name): values for name, values in presets.items() if isinstance(values, dict)}

    def _write(self, presets: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".partial")
        temporary.write_text(json.dumps({"presets": presets}, indent=2, sort_keys=True))
        os.replace(temporary, self.path)

    @staticmethod
    def _check_name(name: str) -> str:
        name = (name or "").strip()
        if not name:
            raise PresetError("give the preset a name")
        if name == LAST_USED:
            raise PresetError(f"{LAST_USED!r} is reserved for the last-used settings")
        return name

    def names(self) -> list[str]:
        with self._lock:
            return sorted(name for name in self._read() if name != LAST_USED)

    def load(self, name: str) -> dict[str, Any]:
        with self._lock:
            presets = self._read()
        if name not in presets:
            raise PresetError(f"no preset named {name!r}")
        return {key: value for key, value in presets[name].items() if key in CONTROL_FIELDS}

    def save(self, name: str, fields: dict[str, Any]) -> str:
        name = self._check_name(name)
        self._store(name, fields)
        return name

    def _store(self, name: str, fields: dict[str, Any]) -> None:
        with self._lock:
            presets = self._read()
            presets[name] = {key: value for key, value in fields.items() if key in CONTROL_FIELDS}
            self._write(presets)

    def delete(self, name: str) -> None:
        name = self._check_name(name)
        with self._lock:
            presets = self._read()
            if name not in presets:
                raise PresetError(f"no preset named {name!r}")
            del presets[name]
            self._write(presets)

    def save_last_used(self, fields: dict[str, Any]) -> None:
        self._store(LAST_USED, fields)

    def last_used(self) -> dict[str, Any] | None:
        try:
            return self.load(LAST_USED)
        except PresetError:
            return None
