"""The run folder and its checkpoints.

* An existing ``--output_dir`` with files is refused unless ``--overwrite_output_dir`` or a resume.
* A checkpoint holds only safetensors and JSON, nothing that ``pickle`` reads, so resuming a
  checkpoint from someone else cannot run code: one ``<network>.safetensors`` per network (plain
  state dicts), ``training_state.safetensors`` with every other tensor (optimizer moments, EMA
  weights) and ``training_state.json`` with the rest (step, epoch, elapsed time, lr-schedule and
  EMA counters, optimizer hyper-parameters, model type, resolution, seed) and where each tensor goes.
* Checkpoints are written to ``checkpoint-N.tmp`` and renamed, the JSON last: a kill or a full
  disk during a save leaves the previous checkpoint as the latest. ``latest`` skips a newest
  checkpoint that is incomplete or corrupt, with a warning; a named one is refused with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch

from smallgen.errors import UserError
from smallgen.files import read_json, save_json

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_FILE = "training_state.json"
TENSORS_FILE = "training_state.safetensors"
FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint cannot be read or written."""


# ----------------------------------------------------------------------------- state dicts as JSON + tensors


def encode_state(value, key: str, tensors: dict):
    """A state_dict as a JSON tree; tensors go to ``tensors`` under dotted keys."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):  # keys may be ints (optimizer state): keep their type
        return {"__dict__": [[k, encode_state(v, f"{key}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [encode_state(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at {key} in a checkpoint")


def decode_state(tree, tensors: dict):
    if isinstance(tree, list):
        return [decode_state(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__tuple__" in tree:
            return tuple(decode_state(v, tensors) for v in tree["__tuple__"])
        return {k: decode_state(v, tensors) for k, v in tree["__dict__"]}
    return tree


def stateful_parts(objective, accelerator) -> dict:
    """Everything besides the networks that a resume needs, by name (each has state_dict/load_state_dict)."""
    parts = {f"optimizer.{name}": opt for name, opt in objective.optimizers.items()}
    parts.update({f"lr_schedule.{name}": s for name, s in objective.lr_schedulers.items()})
    parts.update(objective.checkpoint_objects())
    if getattr(accelerator, "scaler", None) is not None:
        parts["grad_scaler"] = accelerator.scaler
    return parts


def list_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoints (``checkpoint-N`` with its state file, not ``.tmp``), oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir()
             if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()
             and (p / TRAINING_STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from (missing or unreadable files), or None if it looks whole."""
    from safetensors import safe_open

    try:
        info = read_json(str(path / TRAINING_STATE_FILE))
    except FileNotFoundError:
        return f"no {TRAINING_STATE_FILE}"
    except (OSError, ValueError) as exc:
        return f"{TRAINING_STATE_FILE} is unreadable ({exc})"
    if info.get("format") != FORMAT_VERSION:
        return (f"it is not in this version's checkpoint format (format {info.get('format')!r}, expected "
                f"{FORMAT_VERSION}; checkpoints of older versions held pickles and cannot be resumed)")
    for name in [f"{n}.safetensors" for n in info.get("networks", [])] + [TENSORS_FILE]:
        try:
            with safe_open(str(path / name), "pt") as handle:
                handle.keys()
        except FileNotFoundError:
            return f"{name} is missing"
        except Exception as exc:  # safetensors raises its own error type for truncated or foreign files
            return f"{name} is damaged ({exc})"
    return None


def resolve_resume_checkpoint(resume: str | None, output_dir: str) -> Path | None:
    """The checkpoint to resume from: a named one (refused if damaged) or the newest whole one."""
    if resume is None:
        return None
    if resume == "latest":
        for candidate in reversed(list_checkpoints(output_dir)):
            problem = checkpoint_problem(candidate)
            if problem is None:
                return candidate
            print(f"warning: skipping {candidate}: {problem}", file=sys.stderr, flush=True)
        return None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {resume!r} is not a checkpoint folder")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(f"cannot resume from {resume}: {problem}")
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


def save_checkpoint(objective, accelerator, output_dir: str, step: int, total_limit: int | None,
                    info: dict) -> Path:
    """Write ``checkpoint-<step>`` atomically (every process calls this; the main one writes)."""
    from safetensors.torch import save_file

    final = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    tmp = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}.tmp"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            for name, network in objective.networks.items():
                weights = {k: v.detach().contiguous() for k, v in accelerator.unwrap_model(network).state_dict().items()}
                save_file(weights, str(tmp / f"{name}.safetensors"))
            tensors: dict = {}
            tree = {name: encode_state(part.state_dict(), name, tensors)
                    for name, part in stateful_parts(objective, accelerator).items()}
            save_file(tensors, str(tmp / TENSORS_FILE))
            save_json(str(tmp / TRAINING_STATE_FILE), {**info, "format": FORMAT_VERSION,
                                                         "networks": list(objective.networks), "state": tree})
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            previous = list_checkpoints(output_dir)
            kept = f"the latest checkpoint is still {previous[-1]}" if previous else "no earlier checkpoint exists"
            raise CheckpointError(f"could not write {final} ({exc}); {kept}. Free some space and resume with "
                                  "--resume_from_checkpoint latest.") from None
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def checkpoint_info(path: Path) -> dict:
    """What ``save_checkpoint`` recorded with the state (step, seed, planned steps, clock...)."""
    return read_json(str(Path(path) / TRAINING_STATE_FILE))


def load_checkpoint(objective, accelerator, path: Path, expected: dict) -> dict:
    """Restore networks and training state from ``path`` (safetensors and JSON only); returns its info.

    ``expected`` (model_type, resolution, ...) must match what the checkpoint was written by.
    """
    from safetensors.torch import load_file

    info = checkpoint_info(path)
    differs = {k: (info.get(k), v) for k, v in expected.items() if info.get(k) != v}
    if differs:
        raise CheckpointError(f"{path} belongs to another kind of run: " + ", ".join(
            f"{k} {saved!r} there, {wanted!r} here" for k, (saved, wanted) in differs.items()))
    known = {TRAINING_STATE_FILE, TENSORS_FILE, *(f"{n}.safetensors" for n in info["networks"])}
    ignored = sorted(p.name for p in path.iterdir() if p.name not in known)
    if ignored:
        print(f"warning: ignoring {', '.join(ignored)} in {path} (checkpoints hold only safetensors and JSON)",
              file=sys.stderr, flush=True)
    device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)  # safetensors refuses cpu:0
    try:
        for name, network in objective.networks.items():
            accelerator.unwrap_model(network).load_state_dict(load_file(str(path / f"{name}.safetensors"), device))
        tensors = load_file(str(path / TENSORS_FILE), device)
        for name, part in stateful_parts(objective, accelerator).items():
            part.load_state_dict(decode_state(info["state"][name], tensors))
        for optimizer in objective.optimizers.values():
            match_parameter_layouts(optimizer)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} does not fit this run's networks or optimizers ({type(exc).__name__}: "
                              f"{str(exc)[:300]})") from None
    return info


def match_parameter_layouts(optimizer) -> None:
    """Each optimizer state tensor in its parameter's memory format. A checkpoint stores them contiguous;
    beside --channels_last weights they would step through other loops, an ulp off the unbroken run."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == parameter.shape and value.stride() != parameter.stride():
                    state[key] = torch.empty_like(parameter).copy_(value)


LOCK_FILE = ".smallgen.lock"


class RunFolderBusy(UserError):
    """Another live run writes to the same --output_dir."""


class RunLock:
    """``<output_dir>/.smallgen.lock`` holding the pid and host of the run writing there.

    A second run on the same folder is refused while the first lives; a lock left by a process
    that is gone (kill -9, a second Ctrl-C) is taken over with a warning. Held by the main process.
    """

    def __init__(self, output_dir: str):
        self.path = Path(output_dir) / LOCK_FILE
        self.held = False

    def acquire(self) -> None:
        import socket

        me = {"pid": os.getpid(), "host": socket.gethostname()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._take_over_if_stale(me)
                continue
            with os.fdopen(descriptor, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return

    def _take_over_if_stale(self, me: dict) -> None:
        try:
            owner = read_json(str(self.path))
        except (OSError, ValueError):
            owner = {}
        if owner.get("host") not in (None, me["host"]):
            raise RunFolderBusy(f"{self.path.parent} is in use by process {owner.get('pid')} on host {owner['host']}; "
                                f"if that run is gone, delete {self.path}")
        pid = owner.get("pid")
        if isinstance(pid, int) and pid != me["pid"] and _process_alive(pid):
            raise RunFolderBusy(f"{self.path.parent} is in use by another run (process {pid} on this host); "
                                "wait for it, stop it, or choose another --output_dir")
        print(f"warning: taking over {self.path} left by process {pid}, which is no longer running",
              file=sys.stderr, flush=True)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True
