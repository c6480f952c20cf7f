"""Preemption and faults: signals, a second signal during the save, a busy output folder."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from smallgen.checkpoints import list_checkpoints
from tests.conftest import ROOT
from tests.helpers import run_training, tiny_args

CONSTANT_LR = dict(lr_scheduler="constant", lr_warmup_steps=0)


def _run_with_signals(argv, at_step: int, signum: int, again_during_save: bool = False):
    """Run training in a child process that signals itself after ``at_step`` (and, optionally, again
    while the checkpoint that the signal asked for is being written)."""
    code = (
        "import os, signal, safetensors.torch as st\n"
        "from smallgen import trainer\n"
        "train_one_step = trainer.Trainer.train_one_step\n"
        "def hooked(self, batches):\n"
        "    train_one_step(self, batches)\n"
        f"    if self.global_step == {at_step}:\n"
        f"        os.kill(os.getpid(), {int(signum)})\n"
        "trainer.Trainer.train_one_step = hooked\n"
        "write = st.save_file\n"
        "def save_file(tensors, filename, *args, **kwargs):\n"
        f"    if {again_during_save!r} and 'checkpoint-{at_step}' in str(filename):\n"
        f"        os.kill(os.getpid(), {int(signum)})\n"
        "    write(tensors, filename, *args, **kwargs)\n"
        "st.save_file = save_file\n"
        f"trainer.main({[str(a) for a in argv]!r})\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_saves_and_exits(sprites_dir, tiny_unet_config, tmp_path, signum):
    out = tmp_path / "run"
    common = dict(checkpointing_steps=4, **CONSTANT_LR)
    result = _run_with_signals(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=40, **common), 5, signum)
    assert result.returncode == 128 + signum, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"error: stopped by {signum.name} after step 5; the checkpoint is {out / 'checkpoint-5'}. "
                    "Resume with the same command and --resume_from_checkpoint latest")
    assert [p.name for p in list_checkpoints(str(out))] == ["checkpoint-4", "checkpoint-5"]
    assert json.loads((out / "checkpoint-5" / "training_state.json").read_text())["global_step"] == 5
    assert not (out / "model_index.json").exists()
    # Nothing lost: the signal's checkpoint is exactly five steps of training.
    straight = tmp_path / "straight"
    run_training(tiny_args(sprites_dir, tiny_unet_config, straight, max_train_steps=5, checkpointing_steps=5,
                           **CONSTANT_LR))
    a, b = load_file(out / "checkpoint-5" / "unet.safetensors"), load_file(straight / "checkpoint-5" / "unet.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_signal_during_the_save_exits_at_once(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "run"
    argv = tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=40, checkpointing_steps=4, **CONSTANT_LR)
    result = _run_with_signals(argv, 5, signal.SIGTERM, again_during_save=True)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert [p.name for p in list_checkpoints(str(out))] == ["checkpoint-4"]  # the previous one stays the latest
    assert not (out / "checkpoint-5").exists()
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=6, checkpointing_steps=4,
                           resume_from_checkpoint="latest", **CONSTANT_LR))
    assert not list(out.glob("*.tmp")) and (out / "model_index.json").exists()


def test_one_run_per_output_dir(sprites_dir, tiny_unet_config, tmp_path, capfd):
    import socket

    from smallgen.checkpoints import LOCK_FILE, RunFolderBusy

    out = tmp_path / "run"
    argv = dict(max_train_steps=2, checkpointing_steps=1)
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, **argv))
    assert not (out / LOCK_FILE).exists()  # released at the end
    resume = dict(argv, max_train_steps=3, resume_from_checkpoint="latest")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(RunFolderBusy, match=f"in use by another run \\(process {sleeper.pid} on this host\\)"):
            run_training(tiny_args(sprites_dir, tiny_unet_config, out, **resume))
        assert sorted(p.name for p in out.iterdir()) == before and not (out / "checkpoint-3").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    capfd.readouterr()
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, **resume))  # its owner is gone: taken over
    assert f"taking over {out / LOCK_FILE} left by process {sleeper.pid}" in capfd.readouterr().err
    assert (out / "checkpoint-3").exists() and not (out / LOCK_FILE).exists()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "another-machine"}))
    with pytest.raises(RunFolderBusy, match="process 1 on host another-machine; if that run is gone, delete"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, **dict(resume, max_train_steps=4)))


@pytest.mark.parametrize("target", ["samples", "diffusion_pytorch_model.safetensors"])
def test_a_full_disk_loses_nothing(sprites_dir, tiny_unet_config, tmp_path, monkeypatch, target):
    """ENOSPC while writing sample grids or the exported weights: one clear message, checkpoints intact,
    and resuming finishes the run (re-exporting)."""
    import errno

    import safetensors.torch
    from PIL import Image

    from smallgen.errors import UserError

    def full(path):
        if target in str(path):
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")

    real_save, real_save_file = Image.Image.save, safetensors.torch.save_file
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **k: full(fp) or real_save(self, fp, *a, **k))
    monkeypatch.setattr(safetensors.torch, "save_file", lambda t, f, *a, **k: full(f) or real_save_file(t, f, *a, **k))
    out = tmp_path / "run"
    argv = dict(max_train_steps=4, checkpointing_steps=4)
    what = "the sample grids" if target == "samples" else "the pipeline"
    with pytest.raises(UserError, match=f"could not write {what}.*No space left on device \\(simulated\\)\\); the latest "
                                        "checkpoint is .*checkpoint-4, intact. .*--resume_from_checkpoint latest"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, **argv))
    assert not (out / "results.json").exists()
    monkeypatch.undo()
    results = run_training(tiny_args(sprites_dir, tiny_unet_config, out, resume_from_checkpoint="latest", **argv))
    assert results["global_step"] == 4 and (out / "results.json").exists()
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").exists()


def test_latest_skips_a_truncated_newest_checkpoint(sprites_dir, tiny_unet_config, tmp_path, capfd):
    from smallgen.checkpoints import CheckpointError, resolve_resume_checkpoint

    out = tmp_path / "run"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=4, checkpointing_steps=2))
    weights = out / "checkpoint-4" / "unet.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    capfd.readouterr()
    assert resolve_resume_checkpoint("latest", str(out)).name == "checkpoint-2"
    assert f"warning: skipping {out / 'checkpoint-4'}: unet.safetensors is damaged" in capfd.readouterr().err
    with pytest.raises(CheckpointError, match="cannot resume from .*checkpoint-4: unet.safetensors is damaged"):
        resolve_resume_checkpoint(str(out / "checkpoint-4"), str(out))
    (out / "checkpoint-2" / "training_state.json").unlink()  # and a checkpoint missing its JSON is no checkpoint
    assert resolve_resume_checkpoint("latest", str(out)) is None


def test_a_run_that_fails_releases_its_lock(sprites_dir, tiny_unet_config, tmp_path, monkeypatch):
    from smallgen.checkpoints import LOCK_FILE
    from smallgen.errors import UserError
    from smallgen.trainer import Trainer

    def fail(self, epoch, validated):
        raise UserError("failed at the end of an epoch")

    monkeypatch.setattr(Trainer, "log_epoch", fail)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="failed at the end of an epoch"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=2, checkpointing_steps=1))
    assert (out / "checkpoint-1").exists() and not (out / LOCK_FILE).exists()
