"""--model_type flow: the loss is straight-path velocity matching at the chosen times, sampling is a
written-out Euler (and Heun) integration of the ODE, training resumes exactly (also after kill -9 and
under two processes), the FlowMatchPipeline loads both ways, and a two-colour toy set is learned."""

import json
import shutil

import numpy as np
import pytest
import torch

from models.flow import FlowMatchingLoss
from smallgen.errors import ConfigError
from tests.helpers import (
    assert_red_or_blue,
    assert_same_checkpoint,
    assert_same_images_without_this_project,
    kill_9_then_resume,
    launch_two_processes,
    run_training,
    tiny_args,
    train_on_red_and_blue,
)


def test_the_loss_draws_noise_then_times_and_matches_the_velocity():
    """|v - (n - x)|^2 per image at x_t = (1 - t) x + t n, checked with a velocity that returns x_t
    (so the sign of the target matters)."""
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    seen = {}

    def identity_velocity(noisy, t):
        seen["noisy"], seen["t"] = noisy, t
        return noisy

    per_image = FlowMatchingLoss("uniform")(identity_velocity, images, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(images.shape, generator=generator)
    t = torch.rand((4,), generator=generator)
    noisy = (1 - t.view(-1, 1, 1, 1)) * images + t.view(-1, 1, 1, 1) * noise
    assert torch.allclose(seen["t"], t) and torch.allclose(seen["noisy"], noisy)
    assert torch.allclose(per_image, (noisy - (noise - images)).pow(2).mean(dim=(1, 2, 3)), rtol=1e-5)


def test_logit_normal_times_are_a_sigmoid_of_a_normal():
    loss = FlowMatchingLoss("logit_normal", logit_mean=-0.5, logit_std=0.7)
    times = loss.sample_times(5, torch.Generator().manual_seed(1), "cpu")
    expected = torch.sigmoid(torch.normal(-0.5, 0.7, (5,), generator=torch.Generator().manual_seed(1)))
    assert torch.allclose(times, expected)
    uniform = FlowMatchingLoss("uniform").sample_times(20000, torch.Generator().manual_seed(0), "cpu")
    many = loss.sample_times(20000, torch.Generator().manual_seed(0), "cpu")
    assert abs(uniform.mean() - 0.5) < 0.01 and many.mean() < 0.45 and many.std() < uniform.std()
    with pytest.raises(ValueError, match="density must be one of"):
        FlowMatchingLoss("beta")


def _noise(count=3, size=8):
    from smallgen.seeding import image_generators

    return torch.cat([torch.randn((1, 3, size, size), generator=g)
                      for g in image_generators(2, range(count), torch.device("cpu"))])


def _velocity(unet):
    def velocity(x, sigma):
        with torch.no_grad():
            return unet(x, sigma * 1000).sample

    return velocity


def test_sampling_is_a_written_out_euler_integration_of_the_ode(tiny_unet):
    """The pipeline (what grids and evaluate_fid call) integrates dx/dt = v from t = 1 to 0 with Euler
    steps on diffusers' time grid; Heun is the trapezoidal rule between the same times (2N - 1 calls)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

    from pipelines.pipeline_flow import FlowMatchPipeline
    from smallgen.objectives.flow import FlowObjective
    from smallgen.sampling import draw_images, network_evaluations, to_uint8, with_sampler
    from smallgen.seeding import image_generators

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(5)
    times, velocity, x = scheduler.sigmas, _velocity(tiny_unet), _noise()
    assert times[0] == 1 and times[-1] == 0 and len(times) == 6
    for i in range(5):
        x = x + (times[i + 1] - times[i]) * velocity(x, times[i])
    pipe = FlowMatchPipeline(unet=tiny_unet, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=3, generator=image_generators(2, range(3), torch.device("cpu")), num_inference_steps=5,
                  output_type="pt").images
    assert torch.allclose(images, (x / 2 + 0.5).clamp(0, 1), atol=1e-5)
    euler = with_sampler(pipe, FlowObjective.samplers["flow-euler"])
    assert torch.equal(draw_images(euler, 3, seed=2, num_inference_steps=5), to_uint8(x))

    heun = with_sampler(pipe, FlowObjective.samplers["flow-heun"])
    assert isinstance(heun.scheduler, FlowMatchHeunDiscreteScheduler) and network_evaluations(heun.scheduler, 5) == 9
    x = _noise()
    for i in range(5):
        d = velocity(x, times[i])
        step = x + (times[i + 1] - times[i]) * d
        if times[i + 1] > 0:
            step = x + (times[i + 1] - times[i]) * (d + velocity(step, times[i + 1])) / 2
        x = step
    assert torch.equal(draw_images(heun, 3, seed=2, num_inference_steps=5), to_uint8(x))


def flow_args(data, config, out, **overrides):
    return tiny_args(data, config, out, model_type="flow", **overrides)


def test_flow_trains_resumes_exactly_and_exports(sprites_dir, tiny_unet_config, tmp_path):
    from pipelines.pipeline_flow import FlowMatchPipeline

    common = dict(max_train_steps=6, checkpointing_steps=3, use_ema=True, random_flip=True,
                  flow_timestep_density="logit_normal")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    results = run_training(flow_args(sprites_dir, tiny_unet_config, straight, **common))
    assert np.isfinite(results["train_loss"]) and np.isfinite(results["val_loss"])
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    run_training(flow_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest", **common))
    assert_same_checkpoint(straight / "checkpoint-6", resumed / "checkpoint-6")
    assert {p.name for p in (straight / "samples").iterdir()} == {"epoch_0001_flow_euler.png",
                                                                  "epoch_0001_flow_heun.png"}
    assert json.loads((straight / "model_index.json").read_text())["_class_name"] == ["pipeline_flow",
                                                                                     "FlowMatchPipeline"]
    pipeline = FlowMatchPipeline.from_pretrained(straight)
    assert type(pipeline.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    images = pipeline(batch_size=2, num_inference_steps=4, output_type="np").images
    assert images.shape == (2, 16, 16, 3)
    assert_same_images_without_this_project(pipeline, straight, tmp_path, "FlowMatchPipeline")


def test_flow_resumes_exactly_after_kill_9(sprites_dir, tiny_unet_config, tmp_path):
    common = dict(max_train_steps=24, checkpointing_steps=4, checkpoints_total_limit=2, random_flip=True,
                  logging_steps=10)
    kill_9_then_resume(lambda out, **more: flow_args(sprites_dir, tiny_unet_config, out, **common, **more),
                       tmp_path, last_step=24)


def test_two_flow_processes_resume_exactly(sprites_dir, tiny_unet_config, tmp_path):
    common = dict(max_train_steps=6, checkpointing_steps=3, train_batch_size=4, learning_rate=3e-3)
    straight, resumed = tmp_path / "ddp", tmp_path / "resumed"
    result = launch_two_processes(flow_args(sprites_dir, tiny_unet_config, straight, **common))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model: flow" in result.stdout and "4 x 2 processes" in result.stdout
    assert json.loads((straight / "results.json").read_text())["num_processes"] == 2
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    result = launch_two_processes(flow_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest",
                                            **common))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_checkpoint(straight / "checkpoint-6", resumed / "checkpoint-6")


def test_flow_learns_a_two_colour_set(tmp_path):
    """Trained on red and on blue images, the sampled images are red or blue (both), not a purple mean."""
    from pipelines.pipeline_flow import FlowMatchPipeline

    pipe = train_on_red_and_blue(tmp_path, "flow", FlowMatchPipeline)
    assert_red_or_blue(pipe(batch_size=16, generator=torch.Generator().manual_seed(0), num_inference_steps=10,
                            output_type="np").images)


def test_the_unet_sees_timestep_1000_t_in_training_as_the_schedulers_sample(sprites_dir, tiny_unet_config, tmp_path):
    """Training calls the UNet at timestep 1000 t, the scale at which diffusers' flow schedulers hand it
    timesteps (sigma 1000) when sampling."""
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler

    from smallgen.config import parse_args
    from smallgen.trainer import build_objective

    objective = build_objective(*parse_args([str(a) for a in flow_args(sprites_dir, tiny_unet_config, tmp_path / "x")]))
    seen = []

    def recording(noisy, timestep):
        seen.append(timestep)
        return SimpleNamespace(sample=torch.zeros_like(noisy))

    t = torch.tensor([0.0, 0.25, 1.0])
    objective.denoiser(recording)(torch.zeros(3, 3, 8, 8), t)
    assert torch.equal(seen[0], t * 1000)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(4)
    assert torch.allclose(scheduler.timesteps, scheduler.sigmas[:-1] * 1000)


def test_flow_flags_are_checked_reach_the_loss_and_only_flow_takes_them(sprites_dir, tiny_unet_config, tmp_path):
    from smallgen.config import ModelArguments, parse_args
    from smallgen.trainer import build_objective

    argv = flow_args(sprites_dir, tiny_unet_config, tmp_path / "x", flow_timestep_density="logit_normal",
                     flow_logit_mean=-0.4, flow_logit_std=0.8)
    loss = build_objective(*parse_args([str(a) for a in argv])).loss
    assert (loss.density, loss.logit_mean, loss.logit_std) == ("logit_normal", -0.4, 0.8)
    argv = flow_args(sprites_dir, tiny_unet_config, tmp_path / "x", flow_timestep_density="mode", flow_mode_scale=0.9)
    assert build_objective(*parse_args([str(a) for a in argv])).loss.mode_scale == 0.9

    assert ModelArguments(model_type="flow", flow_timestep_density="logit_normal").flow_logit_std == 1.0
    with pytest.raises(ConfigError, match="--flow_timestep_density must be one of uniform, logit_normal, mode"):
        ModelArguments(model_type="flow", flow_timestep_density="beta")
    with pytest.raises(ConfigError, match="--flow_logit_std must be above 0"):
        ModelArguments(model_type="flow", flow_logit_std=0.0)
    with pytest.raises(ConfigError, match="--flow_logit_mean applies to --model_type flow, not edm"):
        ModelArguments(model_type="edm", flow_logit_mean=0.5)
    with pytest.raises(ConfigError, match="--ddpm_num_steps applies to --model_type ddpm, not flow"):
        ModelArguments(model_type="flow", ddpm_num_steps=100)
