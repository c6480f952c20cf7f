"""--model_type edm: the preconditioning equals diffusers' EDM schedulers', sampling is Karras' Euler,
training resumes exactly, and the exported EDMPipeline loads both ways with the same images."""


import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.edm import EDMLoss, EDMPreconditioning
from smallgen.errors import ConfigError
from tests.helpers import assert_same_images_without_this_project, run_training, tiny_args


def edm_scheduler(kind="euler"):
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

    from smallgen.objectives.edm import EDM_SCHEDULER

    cls = EDMEulerScheduler if kind == "euler" else EDMDPMSolverMultistepScheduler
    return cls(**EDM_SCHEDULER, sigma_data=0.5)


def test_preconditioning_equals_diffusers_edm_schedulers(tiny_unet):
    scheduler = edm_scheduler()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8) * 3
    ours = EDMPreconditioning(0.5)
    for sigma in (0.002, 0.3, 2.0, 80.0):
        levels = torch.full((2,), sigma)
        with torch.no_grad():
            mine = ours.denoise(lambda scaled, c_noise: tiny_unet(scaled, c_noise).sample, x, levels)
            raw = tiny_unet(scheduler.precondition_inputs(x, torch.tensor(sigma)),
                            scheduler.precondition_noise(torch.tensor(sigma))).sample
        theirs = scheduler.precondition_outputs(x, raw, torch.tensor(sigma))
        assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-5), sigma


def test_the_loss_draws_noise_then_levels_and_weights_by_the_level():
    """lambda(sigma) |D - x|^2 per image at ln(sigma) ~ N(P_mean, P_std^2), checked with a denoiser
    that returns 0 (so |D - x|^2 = |x|^2)."""
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    loss = EDMLoss(p_mean=-1.2, p_std=1.2, sigma_data=0.5)
    seen = {}

    def zero_denoiser(noisy, sigma):
        seen["sigma"], seen["noisy"] = sigma, noisy
        return torch.zeros_like(noisy)

    per_image = loss(zero_denoiser, images, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(images.shape, generator=generator)
    sigma = (torch.randn((4,), generator=generator) * 1.2 - 1.2).exp()
    assert torch.allclose(seen["sigma"], sigma) and torch.allclose(seen["noisy"], images + sigma.view(-1, 1, 1, 1) * noise)
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    assert torch.allclose(per_image, weight * images.pow(2).mean(dim=(1, 2, 3)), rtol=1e-5)


def sample_with(unet, scheduler, steps) -> torch.Tensor:
    """Images 0-2 of seed 2 from EDMPipeline's __call__ (the route grids and FID take), as "pt" in [0, 1]."""
    from pipelines import EDMPipeline
    from smallgen.seeding import image_generators

    pipeline = EDMPipeline(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    generators = image_generators(2, range(3), torch.device("cpu"))
    return pipeline(batch_size=3, generator=generators, num_inference_steps=steps, output_type="pt").images


def as_output(x: torch.Tensor) -> torch.Tensor:
    """A written-out loop's x_0 as the pipeline returns it ("pt": [-1, 1] to [0, 1], clamped)."""
    assert ((x > -1) & (x < 1)).float().mean() > 0.4  # many pixels unclamped: the comparison is meaningful
    return (x / 2 + 0.5).clamp(0, 1)


def karras_start(unet, steps):
    """Karras et al.'s levels for ``steps``, the same starting noise as ``sample_with``, and the ODE's
    derivative (x - D(x; sigma)) / sigma with our denoiser."""
    from smallgen.seeding import image_generators

    reference = edm_scheduler()
    reference.set_timesteps(steps)
    x = torch.cat([torch.randn((1, 3, 8, 8), generator=g) for g in image_generators(2, range(3), torch.device("cpu"))])
    denoiser = EDMPreconditioning(0.5)

    def derivative(sample, sigma):
        with torch.no_grad():
            return (sample - denoiser.denoise(lambda s, c: unet(s, c).sample, sample, sigma.repeat(3))) / sigma

    return reference.sigmas, x * reference.init_noise_sigma, derivative


def test_sampling_with_diffusers_edm_euler_is_karras_euler(tiny_unet):
    ours = sample_with(tiny_unet, edm_scheduler(), 6)
    sigmas, x, derivative = karras_start(tiny_unet, 6)  # Algorithm 1 of Karras et al. with Euler steps
    for i in range(len(sigmas) - 1):
        x = x + (sigmas[i + 1] - sigmas[i]) * derivative(x, sigmas[i])
    assert sigmas[0] == 80.0 and sigmas[-1] == 0
    assert torch.allclose(ours, as_output(x), atol=1e-4)


def test_edm_heun_is_karras_algorithm_1(tiny_unet):
    """Our EDMHeunScheduler in EDMPipeline is Heun's method of Karras et al.'s Algorithm 1
    (S_churn = 0) written out: 2N - 1 network calls, Euler for the last step to 0."""
    from pipelines import EDMHeunScheduler
    from smallgen.sampling import network_evaluations

    calls = []
    hook = tiny_unet.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[1]))
    try:
        ours = sample_with(tiny_unet, EDMHeunScheduler.from_config(edm_scheduler().config), 5)
    finally:
        hook.remove()
    assert len(calls) == 9 == network_evaluations(EDMHeunScheduler.from_config(edm_scheduler().config), 5)
    sigmas, x, derivative = karras_start(tiny_unet, 5)
    for i in range(len(sigmas) - 1):
        d = derivative(x, sigmas[i])
        step = x + (sigmas[i + 1] - sigmas[i]) * d
        if sigmas[i + 1] > 0:
            step = x + (sigmas[i + 1] - sigmas[i]) * (d + derivative(step, sigmas[i + 1])) / 2
        x = step
    assert torch.allclose(ours, as_output(x), atol=1e-4)
    assert not torch.allclose(ours, sample_with(tiny_unet, edm_scheduler(), 5), atol=1e-2)  # second order, not Euler


def test_edm_unipc_at_order_1_is_diffusers_edm_dpmsolver_at_order_1(tiny_unet):
    """UniPC's predictor of order 1 without its corrector is DPM-Solver++(1) (DDIM in lambda = -ln sigma):
    our EDM UniPC then draws diffusers' EDM DPM-Solver's images; its default (order 2, corrector) does not."""
    from diffusers import EDMDPMSolverMultistepScheduler

    from pipelines import EDMUniPCScheduler
    from smallgen.objectives.edm import EDM_SCHEDULER

    first_order = EDMUniPCScheduler.from_config(edm_scheduler().config, solver_order=1, disable_corrector=list(range(6)))
    ours = sample_with(tiny_unet, first_order, 6)
    theirs = sample_with(tiny_unet, EDMDPMSolverMultistepScheduler(**EDM_SCHEDULER, sigma_data=0.5, solver_order=1), 6)
    assert torch.allclose(ours, theirs, atol=1e-4)
    default = sample_with(tiny_unet, EDMUniPCScheduler.from_config(edm_scheduler().config), 6)
    assert not torch.allclose(default, ours, atol=1e-3)


def test_edm_trains_resumes_exactly_and_exports(sprites_dir, tiny_unet_config, tmp_path):
    from pipelines import EDMPipeline
    from smallgen.seeding import image_generators

    common = dict(model_type="edm", max_train_steps=6, checkpointing_steps=3, use_ema=True, random_flip=True,
                  grid_num_inference_steps=3)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    results = run_training(tiny_args(sprites_dir, tiny_unet_config, straight, **common))
    assert np.isfinite(results["train_loss"]) and np.isfinite(results["val_loss"])
    resumed.mkdir()
    import shutil

    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    run_training(tiny_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest", **common))
    for name in ("unet.safetensors", "training_state.safetensors"):
        a, b = load_file(straight / "checkpoint-6" / name), load_file(resumed / "checkpoint-6" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert {p.name for p in (straight / "samples").iterdir()} == {"epoch_0001_edm_euler.png",
                                                                  "epoch_0001_edm_dpmsolver.png"}
    pipeline = EDMPipeline.from_pretrained(straight)
    assert type(pipeline.scheduler).__name__ == "EDMEulerScheduler"
    generators = image_generators(0, range(2), torch.device("cpu"))
    images = pipeline(batch_size=2, generator=generators, num_inference_steps=4, output_type="np").images
    assert images.shape == (2, 16, 16, 3) and not np.array_equal(images[0], images[1])
    assert_same_images_without_this_project(pipeline, straight, tmp_path, "EDMPipeline")


def test_edm_refuses_ddpm_only_flags(sprites_dir, tiny_unet_config, tmp_path):
    for flags, message in ((dict(snr_gamma=5), "snr_gamma"), (dict(prediction_type="v_prediction"), "prediction_type")):
        with pytest.raises(ConfigError, match=message):
            run_training(tiny_args(sprites_dir, tiny_unet_config, tmp_path / "x", model_type="edm", **flags))
    assert not (tmp_path / "x").exists()


def test_edm_noise_level_flags_reach_the_loss_and_only_edm_takes_them(sprites_dir, tiny_unet_config, tmp_path):
    from smallgen.config import ModelArguments, parse_args
    from smallgen.objectives.edm import EDMObjective

    argv = tiny_args(sprites_dir, tiny_unet_config, tmp_path / "x", model_type="edm", edm_p_mean=-1.6, edm_p_std=0.9)
    data_args, model_args, train_args = parse_args([str(a) for a in argv])
    loss = EDMObjective(data_args, model_args, train_args).loss
    assert (loss.p_mean, loss.p_std) == (-1.6, 0.9)
    with pytest.raises(ConfigError, match="edm_p_mean"):
        ModelArguments(model_type="ddpm", edm_p_mean=-1.6)
    with pytest.raises(ConfigError, match="edm_p_std"):
        ModelArguments(model_type="edm", edm_p_std=0.0)
