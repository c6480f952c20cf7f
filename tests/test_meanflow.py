"""--model_type meanflow: the target is the MeanFlow identity with du/dt from a Jacobian-vector product
that equals a finite difference, (r, t) are drawn as the paper draws them, the loss's gradient is the
adaptively weighted one, one step of the pipeline is z_1 - u(z_1, 0, 1), training resumes exactly (also
after kill -9 and under two processes), the MeanFlowPipeline loads both ways, and a two-colour toy set
is learned in one call."""

import json
import shutil

import numpy as np
import pytest
import torch

from models.meanflow import WEIGHTING_EPS, MeanFlowLoss
from smallgen.errors import ConfigError
from tests.conftest import ROOT
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


@pytest.fixture
def meanflow_unet():
    """A random two-level UNet2DModel at 8 px with the second timestep embedding (of t - r), eval mode."""
    from diffusers import UNet2DModel

    config = json.loads((ROOT / "configs/models/unet-tiny.json").read_text())
    config.update(sample_size=8, block_out_channels=[16, 32], norm_num_groups=8, class_embed_type="timestep")
    torch.manual_seed(0)
    return UNet2DModel.from_config(config).eval()


def _average_velocity(unet):
    from pipelines.pipeline_meanflow import TIME_SCALE

    def average_velocity(z, start, end):
        return unet(z, end * TIME_SCALE, class_labels=(end - start) * TIME_SCALE).sample

    return average_velocity


def test_the_target_is_the_meanflow_identity_with_a_jvp_equal_to_a_finite_difference(meanflow_unet):
    """u_tgt = v - (t - r) du/dt, du/dt the total derivative along the path (tangents v on z_t, 1 on t, 0
    on r), checked against a central difference of the network; the UNet's attention runs through the
    JVP (the fused kernels have no forward-mode AD, models.meanflow.jvp picks the math one)."""
    images = torch.rand(6, 3, 8, 8) * 2 - 1
    loss = MeanFlowLoss(ratio=0.5)
    u, target = loss.prediction_and_target(_average_velocity(meanflow_unet), images, torch.Generator().manual_seed(4))

    generator = torch.Generator().manual_seed(4)
    noise = torch.randn(images.shape, generator=generator)
    r, t = loss.sample_times(6, generator, "cpu")
    assert (r < t).any() and (r == t).any()
    column = t.view(-1, 1, 1, 1)
    noisy, velocity = (1 - column) * images + column * noise, noise - images
    function, eps = _average_velocity(meanflow_unet), 1e-3
    with torch.no_grad():
        assert torch.allclose(u, function(noisy, r, t), atol=1e-5)
        finite = (function(noisy + eps * velocity, r, t + eps) - function(noisy - eps * velocity, r, t - eps)) / (2 * eps)
    expected = velocity - (t - r).view(-1, 1, 1, 1) * finite
    assert not target.requires_grad and u.requires_grad  # the gradient flows through u alone
    assert torch.allclose(target[r == t], velocity[r == t])  # r = t: plain flow matching
    apart = r < t
    relative = (target[apart] - expected[apart]).norm() / (target[apart] - velocity[apart]).norm()
    assert relative < 1e-2, relative


def test_times_are_sorted_logit_normal_pairs_with_the_ratio_apart():
    loss = MeanFlowLoss(ratio=0.25, logit_mean=-0.4, logit_std=1.0)
    r, t = loss.sample_times(20000, torch.Generator().manual_seed(1), "cpu")
    pair = torch.sigmoid(torch.randn((2, 20000), generator=torch.Generator().manual_seed(1)) - 0.4)
    assert torch.equal(t, pair.max(dim=0).values) and (r <= t).all()
    apart = r < t
    assert abs(apart.float().mean() - 0.25) < 0.01
    assert torch.equal(r[apart], pair.min(dim=0).values[apart])
    same = MeanFlowLoss(ratio=0.0).sample_times(100, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(same[0], same[1])  # ratio 0: flow matching only
    with pytest.raises(ValueError, match="ratio must be in"):
        MeanFlowLoss(ratio=1.5)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_the_value_is_the_error_and_the_gradient_the_adaptively_weighted_one(power):
    """A one-weight 'network' u = w z: the per-image loss reads the mean squared error, and its gradient
    is that of error / (sg(error) + c)^p with the error summed over pixels."""
    images = torch.rand(3, 3, 4, 4) * 2 - 1
    weight = torch.tensor(0.3, requires_grad=True)
    loss = MeanFlowLoss(ratio=0.0, weighting_power=power)  # r = t: the target is v, no JVP term
    per_image = loss(lambda z, start, end: weight * z, images, torch.Generator().manual_seed(2))
    per_image.sum().backward()

    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(images.shape, generator=generator)
    _, t = loss.sample_times(3, generator, "cpu")
    noisy = (1 - t.view(-1, 1, 1, 1)) * images + t.view(-1, 1, 1, 1) * noise
    reference = torch.tensor(0.3, requires_grad=True)
    error = (reference * noisy - (noise - images)).pow(2).sum(dim=(1, 2, 3))
    assert torch.allclose(per_image.detach(), error.detach() / 48, rtol=1e-5)
    (error / (error.detach() + WEIGHTING_EPS).pow(power)).sum().backward()
    assert torch.allclose(weight.grad, reference.grad, rtol=1e-5)


def _pipeline(unet):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pipelines import MeanFlowPipeline

    pipe = MeanFlowPipeline(unet=unet, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_one_step_is_noise_minus_u_and_two_steps_halve_the_interval(meanflow_unet):
    from smallgen.seeding import image_generators

    pipe, u = _pipeline(meanflow_unet), _average_velocity(meanflow_unet)
    noise = torch.cat([torch.randn((1, 3, 8, 8), generator=g) for g in image_generators(2, range(3), torch.device("cpu"))])
    one, half, zero = (torch.full((3,), value) for value in (1.0, 0.5, 0.0))
    with torch.no_grad():
        x1 = noise - u(noise, zero, one)
        middle = noise - 0.5 * u(noise, half, one)
        x2 = middle - 0.5 * u(middle, zero, half)
    for steps, expected in ((1, x1), (2, x2)):
        images = pipe(batch_size=3, generator=image_generators(2, range(3), torch.device("cpu")),
                      num_inference_steps=steps, output_type="pt").images
        assert torch.allclose(images, (expected / 2 + 0.5).clamp(0, 1), atol=1e-5), steps
    assert not torch.allclose(x1, x2, atol=1e-3)


def meanflow_args(data, config, out, **overrides):
    return tiny_args(data, config, out, model_type="meanflow", **overrides)


def test_meanflow_trains_resumes_exactly_and_exports(sprites_dir, tiny_unet_config, tmp_path):
    from pipelines import MeanFlowPipeline

    common = dict(max_train_steps=6, checkpointing_steps=3, use_ema=True, random_flip=True)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    results = run_training(meanflow_args(sprites_dir, tiny_unet_config, straight, **common))
    assert np.isfinite(results["train_loss"]) and np.isfinite(results["val_loss"])
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    run_training(meanflow_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest", **common))
    assert_same_checkpoint(straight / "checkpoint-6", resumed / "checkpoint-6")
    assert {p.name for p in (straight / "samples").iterdir()} == {"epoch_0001_meanflow_1step.png",
                                                                  "epoch_0001_meanflow_2step.png"}
    assert json.loads((straight / "model_index.json").read_text())["_class_name"] == ["pipeline_meanflow",
                                                                                     "MeanFlowPipeline"]
    pipeline = MeanFlowPipeline.from_pretrained(straight)
    assert pipeline.unet.config.class_embed_type == "timestep"
    images = pipeline(batch_size=2, num_inference_steps=1, output_type="np").images
    assert images.shape == (2, 16, 16, 3)
    assert_same_images_without_this_project(pipeline, straight, tmp_path, "MeanFlowPipeline", steps=2)


def test_meanflow_resumes_exactly_after_kill_9(sprites_dir, tiny_unet_config, tmp_path):
    common = dict(max_train_steps=24, checkpointing_steps=4, checkpoints_total_limit=2, random_flip=True,
                  logging_steps=10)
    kill_9_then_resume(lambda out, **more: meanflow_args(sprites_dir, tiny_unet_config, out, **common, **more),
                       tmp_path, last_step=24)


def test_two_meanflow_processes_resume_exactly(sprites_dir, tiny_unet_config, tmp_path):
    common = dict(max_train_steps=6, checkpointing_steps=3, train_batch_size=4, learning_rate=3e-3)
    straight, resumed = tmp_path / "ddp", tmp_path / "resumed"
    result = launch_two_processes(meanflow_args(sprites_dir, tiny_unet_config, straight, **common))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model: meanflow" in result.stdout and "4 x 2 processes" in result.stdout
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    result = launch_two_processes(meanflow_args(sprites_dir, tiny_unet_config, resumed,
                                                resume_from_checkpoint="latest", **common))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_checkpoint(straight / "checkpoint-6", resumed / "checkpoint-6")


def test_meanflow_learns_a_two_colour_set_in_one_call(tmp_path):
    """Trained on red and on blue images, one network call an image gives red or blue images (both), not a
    purple mean."""
    from pipelines import MeanFlowPipeline

    pipe = train_on_red_and_blue(tmp_path, "meanflow", MeanFlowPipeline)
    assert_red_or_blue(pipe(batch_size=16, generator=torch.Generator().manual_seed(0), num_inference_steps=1,
                            output_type="np").images)


def test_meanflow_flags_are_checked_reach_the_loss_and_only_meanflow_takes_them(sprites_dir, tiny_unet_config,
                                                                               tmp_path):
    from smallgen.config import ModelArguments, parse_args
    from smallgen.trainer import build_objective

    argv = meanflow_args(sprites_dir, tiny_unet_config, tmp_path / "x", meanflow_ratio=0.75, meanflow_logit_mean=-2.0,
                         meanflow_logit_std=2.0, meanflow_weighting_power=0.75)
    objective = build_objective(*parse_args([str(a) for a in argv]))
    loss = objective.loss
    assert (loss.ratio, loss.logit_mean, loss.logit_std, loss.weighting_power) == (0.75, -2.0, 2.0, 0.75)
    assert objective.unet.config.class_embed_type == "timestep"
    with pytest.raises(ConfigError, match="--meanflow_ratio must be at most 1"):
        ModelArguments(model_type="meanflow", meanflow_ratio=1.5)
    with pytest.raises(ConfigError, match="--meanflow_logit_std must be above 0"):
        ModelArguments(model_type="meanflow", meanflow_logit_std=0.0)
    with pytest.raises(ConfigError, match="--grid_num_inference_steps does not apply to --model_type meanflow"):
        ModelArguments(model_type="meanflow", grid_num_inference_steps=4)
    with pytest.raises(ConfigError, match="--meanflow_ratio applies to --model_type meanflow, not flow"):
        ModelArguments(model_type="flow", meanflow_ratio=0.5)
