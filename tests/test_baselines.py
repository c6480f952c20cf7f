"""VAE, DCGAN and VAE-GAN: networks, losses, training through train_unconditional.py, export, resume."""


import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.baselines import ConvDecoder, ConvDiscriminator, ConvVAE
from smallgen.errors import ConfigError
from tests.conftest import ROOT, run_without_this_project
from tests.helpers import run_training, tiny_args


def baseline_args(data_dir, output_dir, model_type, **overrides):
    base = dict(model_type=model_type, base_channels=8, latent_dim=16,
                learning_rate=2e-4, adam_beta1=0.5, lr_warmup_steps=0, lr_scheduler="constant")
    return tiny_args(data_dir, None, output_dir, **{**base, **overrides})


@pytest.mark.parametrize("resolution", [8, 16, 32, 64])
def test_networks_shapes_at_any_power_of_two(resolution):
    images = torch.randn(3, 3, resolution, resolution)
    assert ConvDecoder(resolution, 10, base_channels=8)(torch.randn(3, 10)).shape == images.shape
    assert ConvDiscriminator(resolution, base_channels=8)(images).shape == (3,)
    reconstruction, mean, logvar, generated = ConvVAE(resolution, 12, base_channels=8)(
        images, torch.randn(3, 12), torch.randn(3, 12))
    assert reconstruction.shape == generated.shape == images.shape and mean.shape == logvar.shape == (3, 12)
    assert reconstruction.abs().max() <= 1


@pytest.mark.parametrize("resolution", [4, 12, 24])
def test_networks_reject_other_resolutions(resolution):
    with pytest.raises(ValueError, match="power-of-two"):
        ConvDecoder(resolution)


def _objective(model_type, **model_flags):
    """A baseline objective of 8 channels and 16 latents on 16 px images, set up on the CPU."""
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from smallgen.config import ModelArguments
    from smallgen.objectives import objective_class

    AcceleratorState._reset_state(reset_partial_state=True)
    torch.manual_seed(0)
    model_args = ModelArguments(model_type=model_type, latent_dim=16, base_channels=8, **model_flags)
    train_args = SimpleNamespace(learning_rate=1e-3, adam_beta1=0.5, adam_beta2=0.999, adam_epsilon=1e-8,
                                 adam_weight_decay=0.0, max_grad_norm=None, eval_batch_size=8, lr_scheduler="constant",
                                 lr_warmup_steps=0, gradient_accumulation_steps=1, use_ema=False,
                                 channels_last=False, torch_compile=False)
    objective = objective_class(model_type)(SimpleNamespace(resolution=16), model_args, train_args)
    objective.setup(Accelerator(cpu=True), max_train_steps=60)
    return objective


def test_latent_dim_and_base_channels_size_the_baselines():
    """--latent_dim 16 and --base_channels 8 (not 100 and 64): the generator's input and first width."""
    generator = _objective("dcgan").networks["generator"]
    assert generator.config.latent_dim == 16 and generator.config.base_channels == 8
    assert generator(torch.randn(2, 16)).shape == (2, 3, 16, 16)


def test_kl_and_adversarial_weights_weigh_their_terms():
    """--kl_weight and --adversarial_weight: the step's loss is recon + kl_weight KL (+ adversarial_weight times
    the generator's GAN loss), from the terms the step reports."""
    from smallgen.objectives.base import MicroBatch

    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    vae = _objective("vae", kl_weight=0.3).train_step([MicroBatch(images, torch.Generator().manual_seed(0))])
    assert vae["train_loss"].item() == pytest.approx(vae["recon_loss"].item() + 0.3 * vae["kl_loss"].item(), rel=1e-5)
    both = _objective("vaegan", kl_weight=0.3, adversarial_weight=0.7).train_step(
        [MicroBatch(images, torch.Generator().manual_seed(0))])
    assert both["train_loss"].item() == pytest.approx(
        both["recon_loss"].item() + 0.3 * both["kl_loss"].item() + 0.7 * both["g_loss"].item(), rel=1e-5)


@pytest.mark.parametrize("model_type", ["vae", "dcgan", "vaegan"])
def test_losses_finite_and_decreasing_on_a_fixed_batch(model_type):
    from smallgen.objectives.base import MicroBatch

    objective = _objective(model_type)
    coarse = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    images = torch.nn.functional.interpolate(coarse, scale_factor=4, mode="bilinear")  # learnable structure
    # The quantity each update minimises, on a fixed batch: the VAE's loss; a GAN's discriminator loss.
    watched = "d_loss" if model_type == "dcgan" else "train_loss"
    history = [objective.train_step([MicroBatch(images, torch.Generator().manual_seed(s))]) for s in range(60)]
    assert all(torch.isfinite(v).all() for h in history for v in h.values())
    first = sum(h[watched].item() for h in history[:5]) / 5
    final = sum(h[watched].item() for h in history[-5:]) / 5
    assert final < 0.8 * first, (first, final)


@pytest.mark.parametrize("model_type,pipeline_class,component", [
    ("vae", "VAEPipeline", "vae"), ("dcgan", "GANPipeline", "decoder"), ("vaegan", "GANPipeline", "decoder")])
def test_train_export_and_reload_identical_samples(sprites_dir, tmp_path, model_type, pipeline_class, component):
    from diffusers import DiffusionPipeline

    import pipelines

    out = tmp_path / model_type
    results = run_training(baseline_args(sprites_dir, out, model_type, num_epochs=2, checkpointing_steps=3))
    assert results["global_step"] == 8  # 36 training images / batch 8 = 4 steps per epoch
    for name in ("model_index.json", f"{component}/diffusion_pytorch_model.safetensors", f"{component}/baselines.py",
                 "loss_curves.png", "metrics.jsonl", "samples/epoch_0001.png", "README.md", "results.json"):
        assert (out / name).exists(), name
    assert "trust_remote_code=True" in (out / "README.md").read_text()
    own = getattr(pipelines, pipeline_class).from_pretrained(out)
    remote = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    assert type(own).__module__.startswith("pipelines.") and type(remote).__name__ == pipeline_class
    a = own(batch_size=3, generator=torch.Generator().manual_seed(5), output_type="np").images
    b = remote(batch_size=3, generator=torch.Generator().manual_seed(5), output_type="np").images
    c = own(batch_size=3, generator=torch.Generator().manual_seed(6), output_type="np").images
    assert a.shape == (3, 16, 16, 3) and 0 <= a.min() and a.max() <= 1
    assert (a == b).all() and not (a == c).all()
    network = getattr(own, component)
    assert network.config.latent_dim == 16 and network.config.base_channels == 8  # --latent_dim, --base_channels
    z = torch.randn((3, network.config.latent_dim), generator=torch.Generator().manual_seed(5))  # N(0, I)
    with torch.no_grad():
        decoded = network.decode(z) if component == "vae" else network(z)
    np.testing.assert_allclose(a, (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert len(own(batch_size=2).images) == 2  # PIL by default, like DDPMPipeline
    metrics = [line for line in (out / "metrics.jsonl").read_text().splitlines() if "_loss" in line]
    expected = {"vae": ["recon_loss", "kl_loss", "val_loss"], "dcgan": ["d_loss", "g_loss"],
                "vaegan": ["recon_loss", "kl_loss", "d_loss", "g_loss", "val_loss"]}[model_type]
    assert all(any(f'"{key}"' in line for line in metrics) for key in expected)


def test_exported_folder_loads_with_only_diffusers(sprites_dir, tmp_path):
    out = tmp_path / "dcgan"
    run_training(baseline_args(sprites_dir, out, "dcgan", max_train_steps=2))
    code = f"""
import torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)
print(type(pipe).__name__, pipe(batch_size=2, output_type="np").images.shape)
"""
    result = run_without_this_project(code, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "GANPipeline (2, 16, 16, 3)" in result.stdout


@pytest.mark.parametrize("model_type", ["vae", "dcgan", "vaegan", "dcgan+ema"])
def test_baseline_training_resumes_exactly(sprites_dir, tmp_path, model_type):
    straight = tmp_path / "straight"
    resumed = tmp_path / "resumed"
    common = dict(num_epochs=2, checkpointing_steps=3, random_flip=True)
    if model_type == "dcgan+ema":
        model_type, common["use_ema"], common["ema_max_decay"] = "dcgan", True, 0.9
    run_training(baseline_args(sprites_dir, straight, model_type, **common))
    run_training(baseline_args(sprites_dir, resumed, model_type, max_train_steps=3, **common))
    run_training(baseline_args(sprites_dir, resumed, model_type, resume_from_checkpoint="latest",
                               **common))  # 3 of 8 steps done: resumes mid-epoch
    component = "vae" if model_type == "vae" else "decoder"
    a = load_file(straight / component / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / component / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Every network (the discriminator is not exported) resumes too: compare the last checkpoints.
    last_a = sorted(straight.glob("checkpoint-*"))[-1]
    last_b = sorted(resumed.glob("checkpoint-*"))[-1]
    assert last_a.name == last_b.name == "checkpoint-6"
    names = sorted(p.name for p in last_a.glob("*.safetensors"))  # every network, optimizer and lr schedule
    networks = {"vae": ["vae"], "dcgan": ["discriminator", "generator"], "vaegan": ["discriminator", "vae"]}[model_type]
    assert names == sorted([f"{n}.safetensors" for n in networks] + ["training_state.safetensors"])
    for name in names:
        x, y = load_file(last_a / name), load_file(last_b / name)
        assert all(torch.equal(x[k], y[k]) for k in x), name


def test_baseline_config_errors(sprites_dir, tmp_path):
    with pytest.raises(ConfigError, match="gradient_accumulation_steps applies to UNet model types"):
        run_training(baseline_args(sprites_dir, tmp_path / "a", "dcgan", gradient_accumulation_steps=2))
    with pytest.raises(ConfigError, match="--use_ema does not apply to --model_type vae"):
        run_training(baseline_args(sprites_dir, tmp_path / "b", "vae", use_ema=True))
    with pytest.raises(ConfigError, match="power-of-two"):
        run_training(baseline_args(sprites_dir, tmp_path / "c", "vae", resolution=24))
    with pytest.raises(ConfigError, match="--model_config_name_or_path applies to --model_type ddpm, edm, .*not vae"):
        run_training(baseline_args(sprites_dir, tmp_path / "d", "vae",
                                   model_config_name_or_path=ROOT / "configs/models/unet-tiny.json"))
    with pytest.raises(SystemExit):  # argparse lists the choices and exits 2
        run_training(baseline_args(sprites_dir, tmp_path / "e", "wgan"))


def test_evaluate_fid_evaluates_a_baseline_unchanged(sprites_dir, tmp_path):
    from smallgen.evaluation import main as evaluate_main
    from smallgen.inception import resolve_inception_weights

    out = tmp_path / "vae"
    run_training(baseline_args(sprites_dir, out, "vae", max_train_steps=2))
    (result,) = evaluate_main(["--pipeline", str(out), "--train_data_dir", str(sprites_dir), "--num_samples", "6",
                               "--num_reference", "6", "--inception_weights", resolve_inception_weights().path,
                               "--cache_dir", str(tmp_path / "cache")])
    assert result["pipeline_class"] == "VAEPipeline" and result["sampler"] is None
    assert result["fid"] > 0 and result["num_samples"] == 6


def test_dcgan_ema_is_what_the_pipeline_samples(sprites_dir, tmp_path):
    """--use_ema for dcgan: the EMA of the generator's weights is checkpointed and exported."""
    run_training(baseline_args(sprites_dir, tmp_path / "run", "dcgan", max_train_steps=4, checkpointing_steps=4,
                               use_ema=True, ema_max_decay=0.9, learning_rate=1e-2))
    checkpoint = tmp_path / "run" / "checkpoint-4"
    live = load_file(checkpoint / "generator.safetensors")
    state = load_file(checkpoint / "training_state.safetensors")
    shadow = [state[k] for k in sorted((k for k in state if k.startswith("ema.shadow_params.")),
                                       key=lambda k: int(k.rsplit(".", 1)[1]))]
    exported = load_file(tmp_path / "run" / "decoder" / "diffusion_pytorch_model.safetensors")
    decoder = ConvDecoder(16, 16, 3, 8)
    parameter_names = [name for name, _ in decoder.named_parameters()]
    assert len(shadow) == len(parameter_names)
    for name, average in zip(parameter_names, shadow):
        assert torch.equal(exported[name], average)
    assert any(not torch.equal(live[n], exported[n]) for n in parameter_names)  # not the live weights
    buffers = [name for name, _ in decoder.named_buffers()]
    assert buffers and all(torch.equal(live[n], exported[n]) for n in buffers)  # BatchNorm statistics: live


def test_gan_pipeline_batchnorm_modes(sprites_dir, tmp_path):
    from pipelines.pipeline_baselines import GANPipeline

    run_training(baseline_args(sprites_dir, tmp_path / "run", "dcgan", max_train_steps=3))
    pipeline = GANPipeline.from_pretrained(tmp_path / "run")
    before = {k: v.clone() for k, v in pipeline.decoder.state_dict().items()}

    def images(n, mode):
        generators = [torch.Generator().manual_seed(i) for i in range(n)]
        return pipeline(batch_size=n, generator=generators, output_type="pt", batchnorm=mode).images

    eval_4, eval_2 = images(4, "eval"), images(2, "eval")
    assert torch.allclose(eval_4[:2], eval_2, atol=1e-6)  # running statistics: image i depends on latent i only
    train_4, train_2 = images(4, "train"), images(2, "train")
    assert not torch.allclose(train_4[:2], train_2, atol=1e-3)  # batch statistics: on the whole batch
    assert not torch.allclose(train_4, eval_4, atol=1e-3)
    after = pipeline.decoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics untouched
    assert not pipeline.decoder.training
    with pytest.raises(ValueError, match="batchnorm"):
        images(2, "both")
