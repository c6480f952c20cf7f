"""The run folder and its checkpoints: exact resume (also after kill -9), pruning, refusals."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from smallgen.checkpoints import list_checkpoints, resolve_resume_checkpoint
from smallgen.errors import ConfigError, UserError
from tests.helpers import (
    ema_weights,
    kill_9_then_resume,
    run_training,
    snapshot,
    tiny_args,
)


def test_resume_is_exact(sprites_dir, tiny_unet_config, tmp_path):
    # 36 training images, batch 8, accumulation 2: 2 optimizer steps an epoch; step 3 is mid-epoch.
    common = dict(max_train_steps=6, checkpointing_steps=3, use_ema=True, gradient_accumulation_steps=2,
                  random_flip=True)
    straight = tmp_path / "straight"
    run_training(tiny_args(sprites_dir, tiny_unet_config, straight, **common))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    run_training(tiny_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest", **common))
    a = load_file(straight / "checkpoint-6" / "unet.safetensors")
    b = load_file(resumed / "checkpoint-6" / "unet.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first_half = load_file(straight / "checkpoint-3" / "unet.safetensors")
    assert any(not torch.equal(a[k], first_half[k]) for k in a)  # the second half did train
    states = [json.loads((folder / "checkpoint-6" / "training_state.json").read_text())["state"]["ema"]
              for folder in (straight, resumed)]
    assert states[0] == states[1] and dict(states[0]["__dict__"])["optimization_step"] == 6
    assert all(torch.equal(x, y) for x, y in zip(ema_weights(straight / "checkpoint-6"),
                                                  ema_weights(resumed / "checkpoint-6")))
    optimizer_a = load_file(straight / "checkpoint-6" / "training_state.safetensors")
    optimizer_b = load_file(resumed / "checkpoint-6" / "training_state.safetensors")
    assert optimizer_a.keys() == optimizer_b.keys() and all(torch.equal(optimizer_a[k], optimizer_b[k]) for k in optimizer_a)
    exported_a = load_file(straight / "unet" / "diffusion_pytorch_model.safetensors")
    exported_b = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(exported_a[k], exported_b[k]) for k in exported_a)
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(4) >= 1 and 1 not in steps  # the resumed run logs from step 4 on


def test_checkpoint_pruning_and_interrupted_saves(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "run"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=5, checkpointing_steps=1,
                           checkpoints_total_limit=2))
    assert [p.name for p in list_checkpoints(str(out))] == ["checkpoint-4", "checkpoint-5"]
    assert not list(out.glob("*.tmp"))
    # A save killed half way leaves a .tmp folder or a folder without its state file: never "latest".
    (out / "checkpoint-9.tmp").mkdir()
    (out / "checkpoint-9.tmp" / "model.safetensors").write_bytes(b"partial")
    (out / "checkpoint-8").mkdir()
    assert resolve_resume_checkpoint("latest", str(out)).name == "checkpoint-5"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=6, checkpointing_steps=1,
                           checkpoints_total_limit=2, resume_from_checkpoint="latest"))
    assert [p.name for p in list_checkpoints(str(out))] == ["checkpoint-5", "checkpoint-6"]
    assert not (out / "checkpoint-9.tmp").exists()
    with pytest.raises(UserError, match="cannot resume from .*checkpoint-8: no training_state.json"):
        resolve_resume_checkpoint(str(out / "checkpoint-8"), str(out))


def test_existing_output_dir_is_not_overwritten(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="already holds files from another run"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=1))
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=1, overwrite_output_dir=True))
    assert (out / "model_index.json").exists()


def test_bad_arguments_leave_the_old_run_untouched(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "run"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=2, checkpointing_steps=1,
                           save_images_epochs=1))
    before = snapshot(out)
    assert any(k.startswith("checkpoint-") for k in before) and "metrics.jsonl" in before
    bad = [
        (dict(model_config_name_or_path="./no/such/unet.json"), ConfigError, "does not exist"),
        (dict(train_data_dir=tmp_path / "no-such-data"), UserError, "does not exist"),
        (dict(resolution=15), ConfigError, "halves the image"),
        (dict(model_type="vae", model_config_name_or_path=None, resolution=12), ConfigError, "power-of-two"),
    ]
    for overrides, error, message in bad:
        argv = tiny_args(sprites_dir, tiny_unet_config, out, **{"max_train_steps": 2, "overwrite_output_dir": True,
                                                                 **overrides})
        with pytest.raises(error, match=message):
            run_training(argv)
        assert snapshot(out) == before, overrides


def test_resuming_a_finished_run_changes_nothing(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "run"
    first = run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=4, checkpointing_steps=4,
                                   use_ema=True, save_images_epochs=1))
    before = snapshot(out)
    again = run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=4, checkpointing_steps=4,
                                   use_ema=True, save_images_epochs=1, resume_from_checkpoint="latest"))
    assert snapshot(out) == before  # no step, no new sample, no rewritten export or log
    assert again["global_step"] == first["global_step"] == 4 and again["train_loss"] == first["train_loss"]


@pytest.mark.parametrize("model_type", ["ddpm", "edm", "vae", "dcgan", "vaegan"])
def test_exact_resume_after_kill_9(sprites_dir, tiny_unet_config, tmp_path, model_type):
    """A process killed with SIGKILL mid-run resumes from its latest checkpoint to the straight result."""
    baseline = model_type in ("vae", "dcgan", "vaegan")
    extra = dict(model_type=model_type, **(dict(model_config_name_or_path=None, base_channels=8, latent_dim=16,
                                                adam_beta1=0.5) if baseline else {}))
    common = dict(max_train_steps=24, checkpointing_steps=4, checkpoints_total_limit=2, random_flip=True,
                  logging_steps=10, **extra)
    kill_9_then_resume(lambda out, **more: tiny_args(sprites_dir, tiny_unet_config, out, **common, **more),
                       tmp_path, last_step=24)


def test_resumed_optimizer_state_takes_its_parameters_layout():
    """A checkpoint stores Adam's moments contiguous; beside --channels_last weights they would step
    through other loops (an ulp off the unbroken run), so a resume gives them the weights' layout."""
    from smallgen.checkpoints import match_parameter_layouts

    weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last))
    optimizer = torch.optim.Adam([weight])
    weight.grad = torch.randn_like(weight)
    optimizer.step()
    saved = optimizer.state_dict()
    saved["state"][0] = {k: (v.contiguous() if v.dim() == 4 else v) for k, v in saved["state"][0].items()}
    resumed = torch.optim.Adam([weight])
    resumed.load_state_dict(saved)
    assert resumed.state[weight]["exp_avg"].stride() != weight.stride()  # as a checkpoint gives it back
    match_parameter_layouts(resumed)
    for key in ("exp_avg", "exp_avg_sq"):
        assert resumed.state[weight][key].stride() == weight.stride()
        assert torch.equal(resumed.state[weight][key], optimizer.state[weight][key])
