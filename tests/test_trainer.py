"""The training loop end to end on tiny models: export, NaN stops, two processes, data feeding."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from smallgen.checkpoints import list_checkpoints
from smallgen.trainer import TrainingDiverged
from tests.helpers import (
    assert_same_checkpoint,
    ema_weights,
    launch_two_machines,
    launch_two_processes,
    run_training,
    tiny_args,
)


def test_the_loss_curves_are_drawn_as_often_as_the_grids(sprites_dir, tiny_unet_config, tmp_path, monkeypatch):
    """5 epochs, grids every 2: the curves are redrawn after epochs 1, 3 and 4 (the last), not after every epoch
    (a redraw takes 0.25 s: it was most of a 300-step run on 64 images), and the last drawing has every record."""
    import smallgen.plots

    drawn, plot = [], smallgen.plots.plot_loss_curves

    def counted(metrics, path, **kwargs):
        drawn.append(max(r.get("epoch", -1) for r in metrics))
        return plot(metrics, path, **kwargs)

    monkeypatch.setattr(smallgen.plots, "plot_loss_curves", counted)
    out = tmp_path / "run"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=20, save_images_epochs=2,
                           ddpm_num_inference_steps=None))
    assert drawn == [1, 3, 4] and (out / "loss_curves.png").is_file()


def test_tiny_run_writes_a_loadable_pipeline(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "run"
    results = run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=8, use_ema=True,
                                     checkpointing_steps=4, random_flip=True, save_images_epochs=1))
    assert results["global_step"] == 8 and results["val_loss"] > 0
    for name in ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
                 "README.md", "loss_curves.png", "metrics.jsonl", "training_args.json"):
        assert (out / name).exists(), name
    assert not list(out.rglob("*.bin")) or all("checkpoint-" in str(p) for p in out.rglob("*.bin"))
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "epoch_0000_ddim.png", "epoch_0000_ddpm.png", "epoch_0001_ddim.png", "epoch_0001_ddpm.png"]
    from PIL import Image

    side = 8 * (2 * 16 + 3 * 2)  # --num_sample_images 4: 2 x 2 images of 16 px, 2 px apart, drawn 8 times larger
    assert Image.open(out / "samples" / "epoch_0001_ddim.png").size == (side, side)
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "samples/epoch_0001_ddim.png" in card
    assert f'DiffusionPipeline.from_pretrained("{out}")' in card  # loads what was trained
    table = card.split("| metric | value |\n|---|---|\n")[1].split("\n\n")[0]
    rows = dict(line.strip("|").split(" | ") for line in table.splitlines())
    saved = json.loads((out / "results.json").read_text())
    assert {k.strip() for k in rows} == {k for k, v in saved.items() if v is not None}  # the run's metrics, each
    for key, value in rows.items():
        expected = saved[key.strip()]
        assert (float(value) == pytest.approx(expected, rel=1e-5) if isinstance(expected, (int, float))
                else value.strip() == str(expected)), key

    from diffusers import DDIMPipeline, DDPMPipeline, DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipeline, DDPMPipeline)
    images = pipeline(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
    assert images.shape == (2, 16, 16, 3) and images.min() >= 0 and images.max() <= 1
    ddim = DDIMPipeline.from_pretrained(out)
    images = ddim(batch_size=2, num_inference_steps=3, output_type="np").images
    assert images.shape == (2, 16, 16, 3)
    # The exported weights are the EMA weights.
    ema = ema_weights(out / "checkpoint-8")
    exported = list(pipeline.unet.parameters())
    assert len(ema) == len(exported) and all(torch.equal(a, b) for a, b in zip(ema, exported))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "train_loss" in m] == [1, 2, 3, 4, 5, 6, 7, 8]
    args = json.loads((out / "training_args.json").read_text())
    assert "hub_token" not in args and args["use_ema"] is True


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "run"
    # Warm-up of 0, no clipping and an absurd constant learning rate blow the weights up after a step or two.
    with pytest.raises(TrainingDiverged, match="train_loss became (nan|inf)") as info:
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=40, checkpointing_steps=1,
                               learning_rate=1e30, lr_warmup_steps=0, lr_scheduler="constant", max_grad_norm=0,
                               adam_epsilon=1e-30))
    good = list_checkpoints(str(out))
    assert good, "the first step's checkpoint is kept"
    assert str(good[-1]) in str(info.value)
    weights = load_file(good[-1] / "unet.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / "model_index.json").exists()  # no pipeline exported from a diverged run


def test_two_processes_really_run_and_resume_exactly(sprites_dir, tiny_unet_config, tmp_path):
    # 36 training images: batch 4 x 2 processes = 4 steps an epoch (one process of batch 4: 9).
    common = dict(max_train_steps=6, checkpointing_steps=3, train_batch_size=4, learning_rate=3e-3, random_flip=True)
    straight = tmp_path / "ddp"
    result = launch_two_processes(tiny_args(sprites_dir, tiny_unet_config, straight, **common))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "6 optimizer steps, 4 per epoch, 4 x 2 processes" in result.stdout
    assert result.stdout.count("pipeline saved to") == 1  # printed once, by the main process
    assert json.loads((straight / "results.json").read_text())["num_processes"] == 2
    assert [p.name for p in list_checkpoints(str(straight))] == ["checkpoint-3", "checkpoint-6"]
    metrics = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "train_loss" in m] == [1, 2, 3, 4, 5, 6]  # one log, not one per process
    from diffusers import DiffusionPipeline

    assert DiffusionPipeline.from_pretrained(straight).unet.config.sample_size == 16
    # N straight == N/2 + resume + N/2, under two processes too (step 3 is mid-epoch).
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    result = launch_two_processes(tiny_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest",
                                             **common))
    assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(straight / "checkpoint-6" / "unet.safetensors")
    b = load_file(resumed / "checkpoint-6" / "unet.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in load_file(straight / "checkpoint-3" / "unet.safetensors").items())
    # One process of batch 8 sees the same images every step; only the noise draws differ, so the
    # validation losses agree closely while training moves them far more.
    single = tmp_path / "single"
    run_training(tiny_args(sprites_dir, tiny_unet_config, single, **{**common, "train_batch_size": 8}))

    def val_losses(folder):
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return {m["step"]: m["val_loss"] for m in records if m.get("val_loss") is not None}

    two, one = val_losses(straight), val_losses(single)
    assert two.keys() == one.keys() == {4, 6}
    assert all(abs(two[s] / one[s] - 1) < 0.03 for s in two), (two, one)
    assert abs(two[6] / two[4] - 1) > 0.05  # training moved the loss more than the two runs differ


def test_two_machines_train_like_one_machine_with_two_processes(sprites_dir, tiny_unet_config, tmp_path):
    """tools/multinode.sbatch on two nodes (a stand-in srun starts its launchers as machines 0 and 1 on
    127.0.0.1, world size 2) gives the weights of one launcher with two processes, and resumes exactly
    from its checkpoint (the output folder is shared, as on a cluster)."""
    common = dict(max_train_steps=6, checkpointing_steps=3, train_batch_size=4, learning_rate=3e-3, random_flip=True)
    one = tmp_path / "one-machine"
    done = launch_two_processes(tiny_args(sprites_dir, tiny_unet_config, one, **common))
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two-machines"
    code, nodes = launch_two_machines(tiny_args(sprites_dir, tiny_unet_config, two, **common), tmp_path / "logs")
    assert code == 0, nodes[0][1][-3000:] + nodes[1][1][-3000:]
    assert "4 x 2 processes" in nodes[0][0] and "pipeline saved to" not in nodes[1][0]  # rank 0 writes
    assert json.loads((two / "results.json").read_text())["num_processes"] == 2
    assert_same_checkpoint(one / "checkpoint-6", two / "checkpoint-6")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(one / "checkpoint-3", resumed / "checkpoint-3")
    code, nodes = launch_two_machines(tiny_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest",
                                                **common), tmp_path / "resume-logs")
    assert code == 0, nodes[0][1][-3000:] + nodes[1][1][-3000:]
    assert_same_checkpoint(one / "checkpoint-6", resumed / "checkpoint-6")


def test_two_processes_share_each_global_batch():
    """Process p of P takes a strided share of the same global batch one process of batch P*B takes."""
    from smallgen.data import ShuffledIndexBatches

    single = list(ShuffledIndexBatches(40, 8, seed=3).epoch(1))
    shares = [list(ShuffledIndexBatches(40, 4, seed=3, num_processes=2, process_index=p).epoch(1)) for p in (0, 1)]
    assert len(single) == len(shares[0]) == len(shares[1]) == 5
    for whole, a, b in zip(single, *shares):
        assert sorted(torch.cat([a, b]).tolist()) == sorted(whole.tolist()) and not set(a.tolist()) & set(b.tolist())


def test_lazy_and_on_device_feeding_train_identically(sprites_dir, tiny_unet_config, tmp_path):
    # The datasets-transform path (large datasets) and the uint8-tensor path give the same batches.
    for mode in ("yes", "no"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, tmp_path / mode, max_train_steps=3,
                               checkpointing_steps=3, random_flip=True, dataset_on_device=mode))
    a = load_file(tmp_path / "yes" / "checkpoint-3" / "unet.safetensors")
    b = load_file(tmp_path / "no" / "checkpoint-3" / "unet.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_ema_warm_up_follows_its_flags(sprites_dir, tiny_unet_config, tmp_path):
    """--ema_inv_gamma / --ema_power reach diffusers' EMAModel: decay 1 - (1 + step / gamma)^-power."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from smallgen.config import parse_args
    from smallgen.trainer import build_objective

    argv = tiny_args(sprites_dir, tiny_unet_config, tmp_path / "x", use_ema=True, ema_power=0.5, ema_inv_gamma=2.0)
    data_args, model_args, train_args = parse_args([str(a) for a in argv])
    AcceleratorState._reset_state(reset_partial_state=True)
    objective = build_objective(data_args, model_args, train_args)
    objective.setup(Accelerator(cpu=True), max_train_steps=10)
    # EMAModel's decay at optimization step s counts s - 1 updates
    assert objective.ema.get_decay(9) == pytest.approx(1 - (1 + 8 / 2.0) ** -0.5)
    # --ema_warmup off (--no_ema_warmup): diffusers' (1 + s) / (10 + s); --ema_max_decay caps either
    argv = tiny_args(sprites_dir, tiny_unet_config, tmp_path / "x", use_ema=True, no_ema_warmup=True, ema_max_decay=0.5)
    AcceleratorState._reset_state(reset_partial_state=True)
    objective = build_objective(*parse_args([str(a) for a in argv]))
    objective.setup(Accelerator(cpu=True), max_train_steps=10)
    assert objective.ema.get_decay(7) == pytest.approx(7 / 16) and objective.ema.get_decay(100) == 0.5
