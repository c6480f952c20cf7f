"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import json
import os


def save_json(path: str, values: dict) -> None:
    """Write ``values`` as indented JSON through ``path.tmp`` + rename (atomic on POSIX)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)
