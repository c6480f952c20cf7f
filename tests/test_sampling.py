"""One sampling route: grids and FID samples come from a pipeline's __call__, image i from (seed, i)."""


import pytest
import torch

from smallgen.objectives.diffusion import DDPM_SAMPLERS


def ddpm_pipeline(unet, steps: int = 50):
    from diffusers import DDPMPipeline, DDPMScheduler

    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=steps))


@pytest.mark.parametrize("sampler,eta", [("ddpm", None), ("ddim", 0.5)])
def test_images_do_not_depend_on_the_batch_size(tiny_unet, sampler, eta):
    from smallgen.objectives.diffusion import DDPM_SAMPLERS
    from smallgen.sampling import draw_images, with_sampler

    pipeline = with_sampler(ddpm_pipeline(tiny_unet), DDPM_SAMPLERS[sampler])
    options = {"num_inference_steps": 4, **({} if eta is None else {"eta": eta})}
    # Stochastic samplers: the noise added at every step must be per image too, not only x_T.
    runs = [draw_images(pipeline, 9, seed=5, batch_size=b, **options) for b in (1, 7, 64)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    assert not torch.equal(runs[0][0], runs[0][1])  # different images, not one repeated
    tail = draw_images(pipeline, 4, seed=5, batch_size=3, first_index=5, **options)
    assert torch.equal(tail, runs[0][5:])  # image i is image i, wherever it starts
    other_seed = draw_images(pipeline, 9, seed=6, batch_size=7, **options)
    assert not torch.equal(other_seed, runs[0])


def test_call_options_may_depend_on_the_image_indices(tiny_unet):
    from smallgen.sampling import draw_images

    seen = []

    class Recording(type(ddpm_pipeline(tiny_unet))):
        def __call__(self, batch_size=1, generator=None, output_type="pil", num_inference_steps=1, labels=()):
            seen.append(list(labels))
            return super().__call__(batch_size=batch_size, generator=generator, output_type=output_type,
                                    num_inference_steps=num_inference_steps)

    pipeline = Recording(**ddpm_pipeline(tiny_unet).components)
    draw_images(pipeline, 5, seed=0, batch_size=2, first_index=3, labels=lambda indices: [i % 4 for i in indices])
    assert seen == [[3, 0], [1, 2], [3]]


def test_evaluate_fid_samples_do_not_depend_on_the_batch_size(tiny_unet, tmp_path):
    from models.baselines import ConvDecoder
    from pipelines import GANPipeline
    from smallgen.evaluation import EvaluationArguments
    from smallgen.sample_sources import generate, sampling_pipeline

    torch.manual_seed(0)
    pipelines = {"ddpm": ddpm_pipeline(tiny_unet), "gan": GANPipeline(decoder=ConvDecoder(8, 10, base_channels=8).eval())}
    for name, pipeline in pipelines.items():
        images = []
        for batch_size in (1, 7, 64):
            args = EvaluationArguments(samples_dir=str(tmp_path), train_data_dir=str(tmp_path), num_samples=9,
                                       batch_size=batch_size, scheduler="ddim", eta=0.3, seed=2)
            images.append(generate(sampling_pipeline(pipeline, args), args, 3 if name == "ddpm" else None,
                                   torch.device("cpu")))
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
                                 gradient_accumulation_steps=1, use_ema=False, eval_batch_size=2,
                                 channels_last=False, torch_compile=False)
    objective = objective_class("dcgan")(SimpleNamespace(resolution=8), ModelArguments(model_type="dcgan",
                                         latent_dim=10, base_channels=8), train_args)
    objective.setup(Accelerator(cpu=True), max_train_steps=1)
    generator = objective.networks["generator"]
    five, three = objective.sample_grids(5, seed=4)[""], objective.sample_grids(3, seed=4)[""]
    assert torch.equal(five[:3], three) and not torch.equal(five[0], five[1])
    assert generator.training  # drawn in eval mode, handed back in training mode


def documented_loop(unet, scheduler, steps: int, seed: int, count: int, eta=None) -> torch.Tensor:
    """diffusers' documented sampling loop, written out: noise scaled by init_noise_sigma, the model
    input scaled, each step given the per-image generators (and eta) where it takes them."""
    import inspect

    from diffusers.utils.torch_utils import randn_tensor

    from smallgen.sampling import to_uint8
    from smallgen.seeding import image_generators

    config = unet.config
    generators = image_generators(seed, range(count), torch.device("cpu"))
    scheduler.set_timesteps(steps)
    x = randn_tensor((count, config.in_channels, config.sample_size, config.sample_size), generator=generators)
    x = x * scheduler.init_noise_sigma
    takes = inspect.signature(scheduler.step).parameters
    options = {"generator": generators} if "generator" in takes else {}
    options.update({"eta": eta} if eta is not None else {})
    for t in scheduler.timesteps:
        with torch.no_grad():
            prediction = unet(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(prediction, t, x, **options).prev_sample
    return to_uint8(x)


@pytest.mark.parametrize("sampler", list(DDPM_SAMPLERS))
def test_each_ddpm_sampler_through_its_pipeline_equals_diffusers_documented_loop(tiny_unet, sampler):
    """evaluate_fid's samplers for DDPMPipeline folders are diffusers' schedulers run by diffusers' own
    pipelines; a sampler those pipelines would run wrong (Euler: no input scaling) fails here."""
    from smallgen.sampling import draw_images, with_sampler

    spec = DDPM_SAMPLERS[sampler]
    pipeline = with_sampler(ddpm_pipeline(tiny_unet), spec)
    eta = 0.5 if sampler == "ddim" else None
    ours = draw_images(pipeline, 3, seed=4, batch_size=2, num_inference_steps=6, **({"eta": eta} if eta else {}))
    assert torch.equal(ours, documented_loop(tiny_unet, type(pipeline.scheduler).from_config(pipeline.scheduler.config),
                                             6, seed=4, count=3, eta=eta))
    if sampler.startswith("dpmsolver"):
        assert pipeline.scheduler.config.solver_order == (3 if sampler.endswith("3m") else 2)


def test_the_reverse_strips_end_where_the_pipeline_does(tiny_unet):
    """The report's x_t strips run the loop written out; their last frame is the pipeline's image."""
    from diffusers import DDIMScheduler

    from smallgen.objectives.diffusion import DDPM_SAMPLERS
    from smallgen.plots import reverse_process_frames
    from smallgen.sampling import draw_images, with_sampler

    pipeline = ddpm_pipeline(tiny_unet)
    for sampler, scheduler, eta in [("ddpm", pipeline.scheduler, None),
                                    ("ddim", DDIMScheduler.from_config(pipeline.scheduler.config), 0.0)]:
        frames = reverse_process_frames(tiny_unet, scheduler, 5, seed=3, num_frames=3, eta=eta)
        drawn = draw_images(with_sampler(pipeline, DDPM_SAMPLERS[sampler]), 1, seed=3, num_inference_steps=5,
                            **({} if eta is None else {"eta": eta}))
        assert torch.equal(frames[-1][1], drawn), sampler


def test_grids_are_what_the_exported_pipeline_draws(tiny_unet_config):
    """A UNet model type's grids: its exported pipeline with each grid's sampler, image i from (seed, i)."""
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from smallgen.config import ModelArguments
    from smallgen.objectives import objective_class
    from smallgen.sampling import draw_images, with_sampler

    AcceleratorState._reset_state(reset_partial_state=True)
    train_args = SimpleNamespace(learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                                 adam_weight_decay=0.0, lr_scheduler="constant", lr_warmup_steps=0,
                                 gradient_accumulation_steps=1, use_ema=False, posthoc_ema=False, eval_batch_size=3,
                                 channels_last=False, torch_compile=False)
    model_args = ModelArguments(model_type="edm", model_config_name_or_path=str(tiny_unet_config),
                                grid_num_inference_steps=3)
    objective = objective_class("edm")(SimpleNamespace(resolution=8), model_args, train_args)
    objective.setup(Accelerator(cpu=True), max_train_steps=1)
    grids = objective.sample_grids(4, seed=7)
    pipeline = objective.make_pipeline("cpu")
    assert grids.keys() == {"edm_euler", "edm_dpmsolver"}
    for name, sampler in (("edm_euler", "edm-euler"), ("edm_dpmsolver", "edm-dpmsolver")):
        expected = draw_images(with_sampler(pipeline, objective.samplers[sampler]), 4, seed=7, num_inference_steps=3)
        assert torch.equal(grids[name], expected), name
    assert not torch.equal(grids["edm_euler"], grids["edm_dpmsolver"])
