"""The run folder and its checkpoints.

* An existing ``--output_dir`` with files is refused unless ``--overwrite_output_dir`` or a resume.
* Checkpoints are written to ``checkpoint-N.tmp`` and renamed, so a kill or a full disk during a
  save leaves the previous checkpoint as the latest; a folder without its ``training_state.json``
  is never taken as a checkpoint.
* A checkpoint holds the accelerator's state (weights as safetensors, optimizers, registered
  objects such as lr schedules and the EMA) and ``training_state.json`` (step, epoch, elapsed).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from smallgen.errors import UserError
from smallgen.files import read_json, save_json

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_FILE = "training_state.json"


def list_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoints (``checkpoint-N`` with its state file, not ``.tmp``), oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir()
             if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()
             and (p / TRAINING_STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_resume_checkpoint(resume: str | None, output_dir: str) -> Path | None:
    if resume is None:
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not path.is_dir() or not (path / TRAINING_STATE_FILE).exists():
        raise UserError(f"--resume_from_checkpoint {resume!r} is not a checkpoint folder (no {TRAINING_STATE_FILE})")
    return path


def check_output_dir(output_dir: str, resuming: bool, overwrite: bool) -> None:
    """Refuse to write over another run's folder unless asked (changes nothing)."""
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output_dir {output_dir!r} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not resuming and not overwrite:
        raise UserError(
            f"--output_dir {output_dir!r} already holds files from another run; pass "
            "--overwrite_output_dir to replace them or --resume_from_checkpoint latest to continue"
        )


def prepare_output_dir(output_dir: str, logging_dir: str, resuming: bool, overwrite: bool) -> None:
    """Create the run folder; with --overwrite_output_dir, clear the old run's checkpoints and logs.

    Called only after every argument, the network and the data have been checked.
    """
    folder = Path(output_dir)
    if folder.is_dir() and not resuming and overwrite:
        for stale in [*folder.glob(f"{CHECKPOINT_PREFIX}*"), folder / logging_dir, folder / "samples"]:
            if stale.is_dir():
                shutil.rmtree(stale)
        if (folder / "metrics.jsonl").exists():
            (folder / "metrics.jsonl").unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(f"{CHECKPOINT_PREFIX}*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)  # a save that was interrupted


def save_checkpoint(accelerator, output_dir: str, step: int, total_limit: int | None, state: dict) -> Path:
    """Write ``checkpoint-<step>`` atomically (every process calls this) and prune old ones."""
    final = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    tmp = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        save_json(str(tmp / TRAINING_STATE_FILE), state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict:
    """Restore the accelerator's state from ``path``; returns its training state."""
    accelerator.load_state(str(path))
    return read_json(str(path / TRAINING_STATE_FILE))
