"""Pictures and REPORT.md: files written at the expected sizes, plotted values taken from the inputs."""

import json

import pytest
import torch
from PIL import Image

from models.schedulers import NoiseSchedule
from smallgen.plots import (
    plot_fid_vs_steps,
    plot_fid_vs_training_time,
    plot_forward_process,
    plot_loss_curves,
    plot_progression,
    plot_reverse_process,
    reverse_process_frames,
)
from tests.conftest import ROOT
from tests.helpers import run_training, tiny_args


def size(path):
    with Image.open(path) as image:
        return image.size


def test_loss_curves_one_panel_per_family(tmp_path):
    metrics = [{"step": 1, "train_loss": 0.5, "recon_loss": 300.0, "kl_loss": 9.0, "d_loss": 1.3, "g_loss": 0.7},
               {"step": 2, "train_loss": 0.4, "recon_loss": 250.0, "kl_loss": 11.0, "d_loss": 1.1, "g_loss": 0.9},
               {"step": 2, "epoch": 0, "val_loss": 0.45}]
    series = plot_loss_curves(metrics, str(tmp_path / "loss.png"))
    assert series["train_loss"] == ([1, 2], [0.5, 0.4]) and series["val_loss"] == ([2], [0.45])
    assert series["d_loss"] == ([1, 2], [1.3, 1.1]) and series["kl_loss"][1] == [9.0, 11.0]
    assert size(tmp_path / "loss.png") == (4 * 550, 400)  # four families -> four panels
    plot_loss_curves([{"step": 1, "train_loss": 0.3}], str(tmp_path / "one.png"))
    assert size(tmp_path / "one.png") == (550, 400)


def test_forward_process_strip_uses_each_schedules_alpha_bar(tmp_path):
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    schedules = {"linear": NoiseSchedule(300, beta_schedule="linear"), "cosine": NoiseSchedule(300, beta_schedule="cosine")}
    drawn = plot_forward_process(images, schedules, str(tmp_path / "forward.png"), num_columns=6)
    for label, schedule in schedules.items():
        timesteps, abar = drawn[label]
        assert timesteps[0] == 0 and timesteps[-1] == 299 and len(timesteps) == 6
        assert abar == pytest.approx(schedule.alphas_cumprod[timesteps].tolist())
    assert drawn["cosine"][1][2] > drawn["linear"][1][2]  # cosine keeps more signal mid-way
    assert size(tmp_path / "forward.png") == (720, 540)  # 6 columns x 1.2 in, 4 rows x 1.2 + 0.6 in, 100 dpi


def test_reverse_strip_ends_at_the_sampler_output(tmp_path):
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    from smallgen.sampling import draw_images

    torch.manual_seed(0)
    config = json.loads((ROOT / "configs/models/unet-tiny.json").read_text())
    config.update(sample_size=16, block_out_channels=[16, 32], norm_num_groups=8)
    unet = UNet2DModel(**config).eval()
    sampler = DDIMScheduler(num_train_timesteps=100)
    frames = reverse_process_frames(unet, sampler, 10, seed=3, num_frames=4, eta=0.0)
    assert [t for t, _, _ in frames] == [90, 60, 30, 0, -1]  # evenly spaced steps, then the final image
    pipeline = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100))
    assert torch.equal(frames[-1][1], draw_images(pipeline, 1, seed=3, num_inference_steps=10, eta=0.0))
    drawn = plot_reverse_process({"DDIM 10": frames, "DDIM again": frames[:3]}, str(tmp_path / "reverse.png"))
    assert drawn == {"DDIM 10": [90, 60, 30, 0, -1], "DDIM again": [90, 60, 30]}
    assert size(tmp_path / "reverse.png") == (600, 580)


def test_progression_picks_evenly_spaced_epochs(tmp_path):
    samples = tmp_path / "run" / "samples"
    samples.mkdir(parents=True)
    for epoch in range(10):
        for sampler in ("ddpm", "ddim"):
            Image.new("RGB", (20, 20), (epoch * 20, 0, 0)).save(samples / f"epoch_{epoch:04d}_{sampler}.png")
    chosen = plot_progression(str(tmp_path / "run"), str(tmp_path / "prog.png"), max_columns=4)
    assert chosen == ["epoch_0000_ddim.png", "epoch_0003_ddim.png", "epoch_0006_ddim.png", "epoch_0009_ddim.png"]
    assert size(tmp_path / "prog.png") == (1200, 340)
    assert plot_progression(str(tmp_path / "run"), str(tmp_path / "p2.png"), sampler="ddpm")[0] == "epoch_0000_ddpm.png"
    assert plot_progression(str(tmp_path / "empty"), str(tmp_path / "p3.png")) == []


def test_fid_plots_take_their_points_from_the_results(tmp_path):
    results = [{"model": "runs/a", "sampler": "ddim", "steps": 50, "eta": 0.0, "fid": 20.0},
               {"model": "runs/a", "sampler": "ddim", "steps": 10, "eta": 0.0, "fid": 40.0},
               {"model": "runs/a", "sampler": "ddpm", "steps": 1000, "eta": None, "fid": 12.0},
               {"model": "runs/gan", "sampler": None, "steps": None, "fid": 50.0}]
    lines = plot_fid_vs_steps(results, str(tmp_path / "steps.png"))
    assert lines == {"a ddim": [(10, 40.0), (50, 20.0)], "a ddpm": [(1000, 12.0)]}
    points = plot_fid_vs_training_time({"a": (1.5, 12.0), "gan": (0.5, 50.0)}, str(tmp_path / "time.png"))
    assert points["a"] == (1.5, 12.0)
    assert size(tmp_path / "steps.png") == size(tmp_path / "time.png") == (650, 420)


def test_report_command_writes_table_and_figures(tmp_path):
    from smallgen.report import main
    from smallgen.testing import write_sprites_npy

    data = tmp_path / "sprites"
    write_sprites_npy(str(data), num_images=24, seed=0)
    config = json.loads((ROOT / "configs/models/unet-tiny.json").read_text())
    config.update(block_out_channels=[16, 32], norm_num_groups=8)
    (tmp_path / "unet.json").write_text(json.dumps(config))
    ddpm, gan = tmp_path / "runs" / "tiny-ddpm", tmp_path / "runs" / "tiny-dcgan"
    run_training(tiny_args(data, tmp_path / "unet.json", ddpm, num_epochs=2, save_images_epochs=1))
    run_training(tiny_args(data, None, gan, num_epochs=2, save_images_epochs=1, model_type="dcgan",
                           model_config_name_or_path=None, base_channels=8, latent_dim=8))
    fid = tmp_path / "fid.json"
    results = [{"model": str(ddpm), "sampler": "ddim", "steps": s, "eta": 0.0, "fid": f, "kid_mean": 0.01,
                "kid_std": 0.001, "num_samples": 10, "num_reference": 10, "images_per_second": 5.0, "device": "cpu"}
               for s, f in ((5, 300.5), (20, 250.25))]
    results.append({"model": str(gan), "sampler": None, "steps": None, "fid": 199.75, "kid_mean": 0.2, "kid_std": 0.01,
                    "num_samples": 10, "num_reference": 10, "images_per_second": 900.0, "device": "cpu"})
    fid.write_text(json.dumps({"results": results}))
    path = main(["--runs", str(ddpm), str(gan), "--fid", str(fid), "--output_dir", str(tmp_path / "report"),
                 "--reverse_steps_ddpm", "5", "--reverse_steps_ddim", "3", "--title", "Tiny runs compared"])
    report = open(path).read()
    assert report.startswith("# Tiny runs compared\n")  # --title
    assert "| tiny-ddpm | ddpm | linear T=100 | ddim | 5 | 300.50 |" in report
    assert "| tiny-dcgan | dcgan | – | – | – | 199.75 |" in report
    figures = tmp_path / "report" / "figures"
    for name in ("fid_vs_steps.png", "fid_vs_training_time.png", "forward_process.png", "reverse_tiny-ddpm.png",
                 "loss_tiny-ddpm.png", "loss_tiny-dcgan.png", "progression_tiny-ddpm.png", "progression_tiny-dcgan.png"):
        assert (figures / name).exists(), name
        assert f"figures/{name}" in report
    with pytest.raises(SystemExit):
        main(["--runs", str(tmp_path / "nothing"), "--output_dir", str(tmp_path / "r2")])


def test_the_strip_flags_reach_the_strips(sprites_dir, tiny_unet_config, tmp_path, monkeypatch):
    """--num_forward_images, --reverse_steps_ddpm (default: the run's T = 100), --reverse_steps_ddim (default
    50) and --skip_reverse, seen in the images and the schedulers' timesteps the strips are drawn with."""
    import smallgen.plots as plots
    from smallgen.report import main

    run = tmp_path / "runs" / "tiny"
    run_training(tiny_args(sprites_dir, tiny_unet_config, run, num_epochs=1))
    drawn = []
    frames, forward = plots.reverse_process_frames, plots.plot_forward_process

    def reverse(unet, scheduler, steps, **kwargs):
        result = frames(unet, scheduler, steps, **kwargs)
        drawn.append((type(scheduler).__name__, len(scheduler.timesteps)))
        return result

    monkeypatch.setattr(plots, "reverse_process_frames", reverse)
    monkeypatch.setattr(plots, "plot_forward_process", lambda images, *a, **k: drawn.append(len(images)) or forward(
        images, *a, **k))

    def report(name, *flags):
        drawn.clear()
        main(["--runs", str(run), "--output_dir", str(tmp_path / name), *flags])
        return list(drawn), sorted(p.name for p in (tmp_path / name / "figures").iterdir())

    strips, figures = report("defaults")
    assert strips == [2, ("DDPMScheduler", 100), ("DDIMScheduler", 50)] and "reverse_tiny.png" in figures
    strips, _ = report("set", "--num_forward_images", "3", "--reverse_steps_ddpm", "7", "--reverse_steps_ddim", "4")
    assert strips == [3, ("DDPMScheduler", 7), ("DDIMScheduler", 4)]
    strips, figures = report("none", "--num_forward_images", "0", "--skip_reverse")
    assert strips == [] and not {"forward_process.png", "reverse_tiny.png"} & set(figures)
