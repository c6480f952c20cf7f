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
from tests.test_training import run_training, tiny_args

CONSTANT_LR = dict(lr_scheduler="constant", lr_warmup_steps=0)


def _run_with_signals(argv, at_step: int, signum: int, again_during_save: bool = False):
    """Run training in a child process that signals itself after ``at_step`` (and, optionally, again
    while the checkpoint that the signal asked for is being written)."""
    code = (
        "import os, signal, safetensors.torch as st\n"
        "from smallgen import trainer\n"
        "after_step = trainer.Trainer.after_step\n"
        "def hooked(self, epoch):\n"
        f"    if self.global_step == {at_step}:\n"
        f"        os.kill(os.getpid(), {int(signum)})\n"
        "    after_step(self, epoch)\n"
        "trainer.Trainer.after_step = hooked\n"
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
