"""--model_type consistency: the parameterization is the scheduler's and makes f(x, sigma_min) = x, the
loss is ECT's, few-step sampling is Song et al.'s Algorithm 1, tuning starts from an EDM run's
exported UNet (and refuses other runs), training resumes exactly and the export samples in 1-4 steps."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.consistency import ConsistencyParameterization, ConsistencyTrainingLoss, pseudo_huber
from smallgen.errors import ConfigError
from tests.helpers import (
    assert_same_checkpoint,
    assert_same_images_without_this_project,
    kill_9_then_resume,
    launch_two_processes,
    run_training,
    tiny_args,
)


def cm_scheduler():
    from diffusers import CMStochasticIterativeScheduler

    from smallgen.objectives.consistency import CM_SCHEDULER

    return CMStochasticIterativeScheduler(**CM_SCHEDULER)


def consistency_args(data, out, **overrides):
    return tiny_args(data, None, out, model_type="consistency", **overrides)


def test_the_parameterization_is_the_schedulers_and_exact_at_sigma_min(tiny_unet):
    scheduler = cm_scheduler()
    ours = ConsistencyParameterization(0.5, 0.002)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8) * 3
    for sigma in (0.002, 0.3, 2.0, 80.0):
        level = torch.tensor(sigma)
        c_skip, c_out, c_in, c_noise = ours.coefficients(torch.full((2,), sigma))
        theirs = scheduler.get_scalings_for_boundary_condition(level)
        assert torch.allclose(c_skip, theirs[0]) and torch.allclose(c_out, theirs[1]), sigma
        assert torch.allclose(c_in, 1 / (level ** 2 + 0.25).sqrt()) and torch.allclose(c_noise, level.log() / 4)
    with torch.no_grad():
        at_minimum = ours.denoise(lambda scaled, c_noise: tiny_unet(scaled, c_noise).sample, x, torch.full((2,), 0.002))
    assert torch.equal(at_minimum, x)  # the boundary condition holds exactly, whatever the network


def test_the_loss_is_ects_with_one_noise_and_no_gradient_through_the_target():
    """lambda(t) d(f(x + t n; t), sg f(x + r n; r)) with r from ECT's mapping at the loss's stage, checked
    with a consistency function that returns its input scaled by a parameter."""
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    loss = ConsistencyTrainingLoss(p_mean=-1.1, p_std=2.0, gap_decay=4.0, huber_c=0.03, sigma_data=0.5)
    loss.stage = 1
    scale = torch.tensor(0.7, requires_grad=True)
    calls = []

    def consistency(noisy, sigma):
        calls.append((noisy, sigma, torch.is_grad_enabled()))
        return noisy * scale

    per_image = loss(consistency, images, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(images.shape, generator=generator)
    t = (torch.randn((4,), generator=generator) * 2.0 - 1.1).exp().clamp(0.002, 80.0)
    r = (t * (1 - 4.0 ** -2 * (1 + 8 * torch.sigmoid(-t)))).clamp(min=0.002)
    assert [c[2] for c in calls] == [True, False]  # the target is computed without a gradient
    assert torch.allclose(calls[0][1], t) and torch.allclose(calls[1][1], r)
    assert torch.allclose(calls[0][0], images + t.view(-1, 1, 1, 1) * noise)
    assert torch.allclose(calls[1][0], images + r.view(-1, 1, 1, 1) * noise)  # the same noise
    distance = ((0.7 * (t - r).view(-1, 1, 1, 1) * noise).pow(2).sum(dim=(1, 2, 3)) + 0.03 ** 2).sqrt() - 0.03
    weight = (t ** 2 + 0.25) / (t * 0.5) ** 2
    assert torch.allclose(per_image, weight * distance, rtol=1e-5)
    per_image.sum().backward()
    assert scale.grad is not None and scale.grad != 0


def test_the_default_huber_c_is_icts_for_the_image_size():
    """--ct_huber_c unset: iCT's c = 0.00054 sqrt(d), d = 3 x 8 x 8 values here (0.0150 at 16 px): the loss
    equals the one given that number."""
    images = torch.rand(4, 3, 8, 8) * 2 - 1

    def consistency(noisy, sigma):
        return noisy * 0.7

    default = ConsistencyTrainingLoss()(consistency, images, torch.Generator().manual_seed(3))
    written_out = ConsistencyTrainingLoss(huber_c=0.00054 * (3 * 8 * 8) ** 0.5)(
        consistency, images, torch.Generator().manual_seed(3))
    assert torch.equal(default, written_out)
    assert not torch.equal(default, ConsistencyTrainingLoss(huber_c=0.00054)(
        consistency, images, torch.Generator().manual_seed(3)))  # the constant matters at this scale


def test_each_stage_shrinks_the_gap_and_r_stays_in_range():
    loss = ConsistencyTrainingLoss()
    t = torch.tensor([0.002, 0.01, 0.5, 2.0, 80.0])
    gaps = []
    for stage in range(4):
        loss.stage = stage
        r = loss.smaller_level(t)
        assert (r >= 0.002).all() and (r <= t).all()
        gaps.append((t - r)[2:] / t[2:])
    assert all((later < earlier).all() for earlier, later in zip(gaps, gaps[1:]))
    assert torch.allclose(gaps[3], 4.0 ** -4 * (1 + 8 * torch.sigmoid(-t[2:])))
    assert torch.equal(pseudo_huber(torch.ones(2, 3), 0.0), torch.full((2,), 3.0).sqrt())


def song_algorithm_1(unet, sigmas, generators):
    """Song et al. 2023, Algorithm 1 (multistep consistency sampling), written out: x = sigma_0 z,
    x = f(x, sigma_0); then for each next level tau: x = f(x + sqrt(tau^2 - sigma_min^2) z, tau). f is
    clipped to [-1, 1] as the scheduler's clip_denoised does; the noise comes from one generator an image."""
    from smallgen.seeding import per_image_randn

    parameterization = ConsistencyParameterization(0.5, 0.002)

    def f(x, sigma):
        levels = torch.full((x.shape[0],), float(sigma))
        return parameterization.denoise(lambda s, c: unet(s, c).sample, x, levels).clamp(-1, 1)

    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    x = per_image_randn(generators, shape, torch.device("cpu")) * 80.0
    for index, sigma in enumerate(sigmas):
        if index > 0:
            x = x + (sigma ** 2 - 0.002 ** 2) ** 0.5 * per_image_randn(generators, shape, torch.device("cpu"))
        x = f(x, sigma)
    return x


@pytest.mark.parametrize("steps, indices", [(1, [0]), (2, [0, 20]), (4, [0, 10, 20, 30]), (None, [0, 25, 35])])
def test_multistep_sampling_is_song_algorithm_1(tiny_unet, steps, indices):
    """The pipeline's loop (diffusers' scheduler) equals the algorithm at the Karras levels of the training
    discretisation's ``indices`` (N = 40, sigma_max at 0); ``num_inference_steps`` spaces them, ``timesteps``
    names them in descending order, as diffusers' ConsistencyModelPipeline takes them."""
    from pipelines import ConsistencyPipeline
    from smallgen.seeding import image_generators

    pipeline = ConsistencyPipeline(unet=tiny_unet, scheduler=cm_scheduler())
    pipeline.set_progress_bar_config(disable=True)
    call = {"num_inference_steps": steps} if steps else {"timesteps": indices[::-1]}
    ours = pipeline(batch_size=3, generator=image_generators(2, range(3), torch.device("cpu")), output_type="pt",
                    **call).images
    ramp = torch.tensor(indices, dtype=torch.float64) / 39
    sigmas = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    with torch.no_grad():
        written = song_algorithm_1(tiny_unet, sigmas.tolist(), image_generators(2, range(3), torch.device("cpu")))
    assert torch.allclose(ours, (written / 2 + 0.5).clamp(0, 1), atol=1e-5)


# ----------------------------------------------------------------------------- training from an EDM run


@pytest.fixture(scope="module")
def edm_run(sprites_dir, tiny_unet_config, tmp_path_factory):
    """A finished tiny EDM run (with an EMA) to tune from; its last checkpoint holds the raw weights."""
    out = tmp_path_factory.mktemp("edm") / "run"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, model_type="edm", max_train_steps=3, use_ema=True,
                           ema_max_decay=0.5, checkpointing_steps=3))
    return out


def test_tuning_starts_from_the_edm_runs_exported_unet(sprites_dir, edm_run, tmp_path):
    from diffusers import UNet2DModel

    from smallgen.config import parse_args
    from smallgen.trainer import build_objective

    objective = build_objective(*parse_args([str(a) for a in consistency_args(sprites_dir, tmp_path / "x",
                                                                              init_from=edm_run)]))
    teacher = UNet2DModel.from_pretrained(edm_run, subfolder="unet").state_dict()
    assert all(torch.equal(value, teacher[key]) for key, value in objective.unet.state_dict().items())
    raw = load_file(edm_run / "checkpoint-3" / "unet.safetensors")  # the trained weights, not the EMA exported
    assert any(not torch.equal(value, raw[key]) for key, value in objective.unet.state_dict().items())
    assert objective.unet.config.dropout == 0.1  # the teacher's network, not a default one


def test_consistency_tunes_resumes_exactly_and_exports(sprites_dir, edm_run, tmp_path):
    """Three stages over six steps: the resumed run restarts mid-stage 1, so it must restore the stage."""
    from pipelines import ConsistencyPipeline
    from smallgen.seeding import image_generators

    common = dict(init_from=edm_run, max_train_steps=6, checkpointing_steps=3, use_ema=True, random_flip=True,
                  ct_stages=3)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    results = run_training(consistency_args(sprites_dir, straight, **common))
    assert np.isfinite(results["train_loss"]) and np.isfinite(results["val_loss"])
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    run_training(consistency_args(sprites_dir, resumed, resume_from_checkpoint="latest", **common))
    assert_same_checkpoint(straight / "checkpoint-6", resumed / "checkpoint-6")
    assert {p.name for p in (straight / "samples").iterdir()} == {f"epoch_0001_cm_{n}step.png" for n in (1, 2, 4)}
    assert json.loads((straight / "model_index.json").read_text())["_class_name"] == ["pipeline_consistency",
                                                                                     "ConsistencyPipeline"]
    pipeline = ConsistencyPipeline.from_pretrained(straight)
    assert type(pipeline.scheduler).__name__ == "CMStochasticIterativeScheduler"
    for steps in (1, 2, 4):
        generators = image_generators(0, range(2), torch.device("cpu"))
        images = pipeline(batch_size=2, generator=generators, num_inference_steps=steps, output_type="np").images
        assert images.shape == (2, 16, 16, 3) and not np.array_equal(images[0], images[1])
    assert_same_images_without_this_project(pipeline, straight, tmp_path, "ConsistencyPipeline", steps=2)


@pytest.mark.slow  # the kill -9 and two-process machinery is the loop's, tested per model type by default
def test_consistency_resumes_exactly_after_kill_9(sprites_dir, edm_run, tmp_path):
    common = dict(init_from=edm_run, max_train_steps=16, checkpointing_steps=4, checkpoints_total_limit=2,
                  random_flip=True, logging_steps=10, ct_stages=4)
    kill_9_then_resume(lambda out, **more: consistency_args(sprites_dir, out, **common, **more), tmp_path,
                       last_step=16)


@pytest.mark.slow
def test_two_consistency_processes_resume_exactly(sprites_dir, edm_run, tmp_path):
    common = dict(init_from=edm_run, max_train_steps=6, checkpointing_steps=3, train_batch_size=4, ct_stages=2)
    straight, resumed = tmp_path / "ddp", tmp_path / "resumed"
    result = launch_two_processes(consistency_args(sprites_dir, straight, **common))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model: consistency" in result.stdout and "4 x 2 processes" in result.stdout
    assert json.loads((straight / "results.json").read_text())["num_processes"] == 2
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    result = launch_two_processes(consistency_args(sprites_dir, resumed, resume_from_checkpoint="latest", **common))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_checkpoint(straight / "checkpoint-6", resumed / "checkpoint-6")


def test_init_from_refuses_other_runs_with_the_reason(sprites_dir, tiny_unet_config, edm_run, tmp_path):
    flow_run = tmp_path / "flow"
    run_training(tiny_args(sprites_dir, tiny_unet_config, flow_run, model_type="flow", max_train_steps=1))
    cases = [(flow_run, {}, "holds a FlowMatchPipeline; consistency tuning starts from an EDM run"),
             (edm_run, {"resolution": 8}, "was trained at 16 px, not --resolution 8"),
             (tmp_path / "missing", {}, "is not a folder and could not be fetched from the Hub"),
             (edm_run, {"model_config_name_or_path": tiny_unet_config}, "not both")]
    for init_from, more, message in cases:
        out = tmp_path / "refused"
        with pytest.raises(ConfigError, match=message):
            run_training(consistency_args(sprites_dir, out, init_from=init_from, **more))
        assert not out.exists()  # refused before anything is written


def test_consistency_flags_are_checked_and_only_consistency_takes_them(sprites_dir, tmp_path):
    from smallgen.config import ModelArguments, parse_args
    from smallgen.trainer import build_objective

    argv = consistency_args(sprites_dir, tmp_path / "x", ct_p_mean=-0.8, ct_p_std=1.7, ct_gap_decay=2.0,
                            ct_huber_c=0.01)
    loss = build_objective(*parse_args([str(a) for a in argv])).loss
    assert (loss.p_mean, loss.p_std, loss.gap_decay, loss.huber_c) == (-0.8, 1.7, 2.0, 0.01)
    with pytest.raises(ConfigError, match="--ct_stages must be at least 1; got 0"):
        ModelArguments(model_type="consistency", ct_stages=0)
    with pytest.raises(ConfigError, match="--init_from applies to --model_type consistency, not edm"):
        ModelArguments(model_type="edm", init_from="runs/quickstart")
    with pytest.raises(ConfigError, match="grids are drawn in 1, 2, 4 steps"):
        ModelArguments(model_type="consistency", grid_num_inference_steps=10)


def test_evaluate_fid_scores_the_consistency_pipeline_at_1_2_and_4_steps(tiny_unet, tmp_path, inception):
    """--scheduler cm sweeps the steps; each row's NFE is its steps and its PNGs are the pipeline's images."""
    from pipelines import ConsistencyPipeline
    from smallgen.evaluation import main
    from smallgen.sampling import draw_images
    from tests.conftest import ROOT

    pipeline = ConsistencyPipeline(unet=tiny_unet, scheduler=cm_scheduler())
    pipeline.save_pretrained(tmp_path / "cm")
    rows = main(["--pipeline", str(tmp_path / "cm"), "--dataset_name", str(ROOT / "data" / "cifar10-sample"),
                 "--split", "test", "--resolution", "8", "--num_reference", "8", "--num_samples", "4",
                 "--batch_size", "4", "--scheduler", "cm", "--num_inference_steps", "1", "2", "4",
                 "--inception_weights", inception.path, "--cache_dir", str(tmp_path / "cache"),
                 "--save_samples", str(tmp_path / "png")])
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in rows] == [("cm", 1, 1), ("cm", 2, 2), ("cm", 4, 4)]
    assert len({r["fid"] for r in rows}) == 3
    from PIL import Image

    pipeline.set_progress_bar_config(disable=True)
    expected = draw_images(pipeline, 4, seed=0, batch_size=4, num_inference_steps=2)
    saved = sorted((tmp_path / "png" / "steps_2").glob("*.png"))
    assert torch.equal(torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                                    for p in saved]), expected)


def test_evaluate_fid_sweeps_the_2_step_middle_level(tiny_unet, tmp_path, inception, capsys):
    """--cm_middle_level i scores 2 steps through level i (timesteps=[i, 0]); 20 is the default 2-step sample;
    the PNGs are the pipeline's images; other step counts and levels past the last are refused."""
    from PIL import Image

    from pipelines import ConsistencyPipeline
    from smallgen.evaluation import main
    from smallgen.sampling import draw_images
    from tests.conftest import ROOT

    pipeline = ConsistencyPipeline(unet=tiny_unet, scheduler=cm_scheduler())
    pipeline.save_pretrained(tmp_path / "cm")
    common = ["--pipeline", str(tmp_path / "cm"), "--dataset_name", str(ROOT / "data" / "cifar10-sample"),
              "--split", "test", "--resolution", "8", "--num_reference", "8", "--num_samples", "4", "--batch_size", "4",
              "--scheduler", "cm", "--inception_weights", inception.path, "--cache_dir", str(tmp_path / "cache")]
    rows = main([*common, "--num_inference_steps", "2", "--cm_middle_level", "10", "20", "30",
                 "--save_samples", str(tmp_path / "png")])
    assert [(r["steps"], r["nfe"], r["timesteps"]) for r in rows] == [(2, 2, [10, 0]), (2, 2, [20, 0]), (2, 2, [30, 0])]
    default = main([*common, "--num_inference_steps", "2"])[0]
    assert rows[1]["fid"] == default["fid"] and len({r["fid"] for r in rows}) == 3
    pipeline.set_progress_bar_config(disable=True)
    expected = draw_images(pipeline, 4, seed=0, batch_size=4, timesteps=[30, 0])
    saved = sorted((tmp_path / "png" / "steps_2_timesteps_30-0").glob("*.png"))
    assert torch.equal(torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                                    for p in saved]), expected)
    for flags, message in ((["1", "2", "--cm_middle_level", "10"], "pass --num_inference_steps 2"),
                           (["2", "--cm_middle_level", "39"], "--cm_middle_level must be below 39")):
        with pytest.raises(SystemExit):
            main([*common, "--num_inference_steps", *flags])
        assert message in capsys.readouterr().err
