"""Per-image seeds: image i depends only on (seed, i), whatever the batch size (EDM's generate.py)."""


import pytest
import torch

from models.schedulers import DDIMSampler, DDPMSampler


@pytest.mark.parametrize("sampler,eta", [(DDPMSampler(num_train_timesteps=50), None),
                                         (DDIMSampler(num_train_timesteps=50), 0.5)])
def test_images_do_not_depend_on_the_batch_size(tiny_unet, sampler, eta):
    from smallgen.sampling import sample_images

    # Stochastic samplers: the noise added at every step must be per image too, not only x_T.
    runs = [sample_images(tiny_unet, sampler, 9, 4, seed=5, batch_size=b, eta=eta) for b in (1, 7, 64)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    assert not torch.equal(runs[0][0], runs[0][1])  # different images, not one repeated
    tail = sample_images(tiny_unet, sampler, 4, 4, seed=5, batch_size=3, eta=eta, first_index=5)
    assert torch.equal(tail, runs[0][5:])  # image i is image i, wherever it starts
    other_seed = sample_images(tiny_unet, sampler, 9, 4, seed=6, batch_size=7, eta=eta)
    assert not torch.equal(other_seed, runs[0])


def test_diffusers_schedulers_take_per_image_generators_too(tiny_unet):
    from diffusers import DDPMScheduler

    from smallgen.sampling import sample_images

    scheduler = DDPMScheduler(num_train_timesteps=50)
    a, b = (sample_images(tiny_unet, scheduler, 5, 3, seed=1, batch_size=n) for n in (2, 5))
    assert torch.equal(a, b)


def test_evaluate_fid_samples_do_not_depend_on_the_batch_size(tiny_unet, tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    from models.baselines import ConvDecoder
    from pipelines import GANPipeline
    from smallgen.evaluation import EvaluationArguments, generate

    torch.manual_seed(0)
    pipelines = {"ddpm": DDPMPipeline(unet=tiny_unet, scheduler=DDPMScheduler(num_train_timesteps=50)),
                 "gan": GANPipeline(decoder=ConvDecoder(8, 10, base_channels=8).eval())}
    for name, pipeline in pipelines.items():
        images = []
        for batch_size in (1, 7, 64):
            args = EvaluationArguments(samples_dir=str(tmp_path), train_data_dir=str(tmp_path), num_samples=9,
                                       batch_size=batch_size, scheduler="ddim", eta=0.3, seed=2)
            images.append(generate(pipeline, args, 3, torch.device("cpu")))
        assert all(torch.equal(images[0], other) for other in images[1:]), name


def test_baseline_sample_grids_draw_image_i_from_seed_and_i():
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from smallgen.config import ModelArguments
    from smallgen.objectives import objective_class

    AcceleratorState._reset_state(reset_partial_state=True)
    train_args = SimpleNamespace(learning_rate=1e-3, adam_beta1=0.5, adam_beta2=0.999, adam_epsilon=1e-8,
                                 adam_weight_decay=0.0, lr_scheduler="constant", lr_warmup_steps=0,
                                 gradient_accumulation_steps=1, use_ema=False)
    objective = objective_class("dcgan")(SimpleNamespace(resolution=8), ModelArguments(model_type="dcgan",
                                         latent_dim=10, base_channels=8), train_args)
    objective.setup(Accelerator(cpu=True), max_train_steps=1)
    five, three = objective.sample_grids(5, seed=4)[""], objective.sample_grids(3, seed=4)[""]
    assert torch.equal(five[:3], three) and not torch.equal(five[0], five[1])


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++", "dpmsolver++3m", "unipc", "euler"])
def test_our_sampling_loop_equals_diffusers_documented_loop(tiny_unet, sampler):
    """evaluate_fid's samplers are diffusers' schedulers, driven exactly as diffusers documents it."""
    from diffusers import DDPMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    from smallgen.evaluation import make_scheduler
    from smallgen.sampling import sample_images, to_uint8
    from smallgen.seeding import image_generators

    config = DDPMScheduler(num_train_timesteps=50).config
    ours = sample_images(tiny_unet, make_scheduler("DDPMPipeline", config, sampler), 3, 6, seed=4, batch_size=2)
    scheduler = make_scheduler("DDPMPipeline", config, sampler)
    scheduler.set_timesteps(6)
    x = randn_tensor((3, 3, 8, 8), generator=image_generators(4, range(3), torch.device("cpu")))
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        with torch.no_grad():
            prediction = tiny_unet(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(prediction, t, x).prev_sample
    assert torch.equal(ours, to_uint8(x))
    if sampler.startswith("dpmsolver"):
        assert scheduler.config.solver_order == (3 if sampler.endswith("3m") else 2)
