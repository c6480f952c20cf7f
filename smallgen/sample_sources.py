"""Where the samples come from: a pipeline (with the sampler asked for, each process drawing its share of the
image indices) or a folder of images.

Image i depends only on (seed, i): the same seed gives the same images whatever the batch size or the
number of processes. Its functions read the sampling fields of ``evaluate_fid.py``'s arguments
(``smallgen.evaluation``); what a model type adds to a pipeline call comes from its objective.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from smallgen.data import decode_image, to_rgb
from smallgen.errors import UserError
from smallgen.objectives import objective_for_pipeline

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")



def load_samples_dir(folder: str, limit: int) -> torch.Tensor:
    """The first ``limit`` images of a folder (sorted by name) as uint8 (N, 3, H, W)."""
    if not os.path.isdir(folder):
        raise UserError(f"--samples_dir {folder!r} does not exist or is not a folder")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))[:limit]
    if len(names) < 2:
        raise UserError(f"--samples_dir {folder!r} holds {len(names)} images; FID needs at least 2")
    arrays = []
    for name in names:
        with open(os.path.join(folder, name), "rb") as handle:
            image = to_rgb(decode_image({"bytes": handle.read(), "path": name}, name))
        if arrays and image.size != (arrays[0].shape[1], arrays[0].shape[0]):
            raise UserError(f"{name} is {image.width}x{image.height}; the other samples are "
                            f"{arrays[0].shape[1]}x{arrays[0].shape[0]}: all samples must have one size")
        arrays.append(np.asarray(image, dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()



def load_pipeline(name_or_path: str, trust_remote_code: bool = False):
    """A pipeline folder or Hub id. One of ours loads into the installed classes (its folder's copy of
    our code does not run); any other through diffusers, with ``trust_remote_code`` as given."""
    from diffusers import DiffusionPipeline

    if name_or_path.startswith((".", "/", "~")) and not os.path.exists(os.path.expanduser(name_or_path)):
        raise UserError(f"--pipeline {name_or_path!r} does not exist")
    if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "model_index.json")):
        raise UserError(f"{name_or_path!r} is not a pipeline folder (no model_index.json)")
    try:
        own = _own_pipeline_class(name_or_path)
        if own is not None:
            return own.from_pretrained(name_or_path)
        return DiffusionPipeline.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # the hub client and diffusers raise many types
        raise UserError(f"could not load pipeline {name_or_path!r}: {type(exc).__name__}: {exc}") from None



def _own_pipeline_class(name_or_path: str):
    """Our installed pipeline class if the model_index.json of a folder or Hub id names one (else None)."""
    import pipelines

    index_path = os.path.join(name_or_path, "model_index.json")
    if not os.path.isdir(name_or_path):
        try:
            from huggingface_hub import hf_hub_download

            index_path = hf_hub_download(name_or_path, "model_index.json")
        except Exception:  # unreachable or unknown: diffusers' loader says why
            return None
    if not os.path.isfile(index_path):
        return None
    with open(index_path) as handle:
        class_name = json.load(handle).get("_class_name")
    if isinstance(class_name, list) and objective_for_pipeline(class_name[-1]) is not None:
        return getattr(pipelines, class_name[-1], None)
    return None



def is_diffusion_pipeline(pipeline) -> bool:
    return hasattr(pipeline, "unet") and hasattr(pipeline, "scheduler")



def sampler_of(pipeline, name: str):
    """The ``Sampler`` ``name`` of the model type that exports this pipeline class."""
    pipeline_class = type(pipeline).__name__
    objective = objective_for_pipeline(pipeline_class)
    offered = objective.samplers if objective is not None else {}
    if name not in offered:
        takes = f"it takes {', '.join(offered)}" if offered else "it is not a pipeline of a known model type"
        raise UserError(f"--scheduler {name} cannot sample a {pipeline_class}: {takes}")
    return offered[name]



def sampling_pipeline(pipeline, args):
    """What draws the samples: a diffusion pipeline with --scheduler's sampler, any other as loaded."""
    from smallgen.sampling import with_sampler

    if not is_diffusion_pipeline(pipeline):
        return pipeline
    return with_sampler(pipeline, sampler_of(pipeline, args.scheduler))



def check_sampler_steps(scheduler, steps: int) -> None:
    """Refuse a setting that indexes past the schedule (e.g. steps_offset 1 with steps == T)."""
    from models.schedulers import inference_timesteps

    config = scheduler.config
    if config.get("timestep_spacing", "leading") == "leading" and steps <= config.num_train_timesteps:
        try:
            inference_timesteps("leading", config.num_train_timesteps, steps, config.get("steps_offset", 0))
        except ValueError as exc:
            raise UserError(f"--num_inference_steps {steps} cannot work with this pipeline's scheduler: {exc}") from None



def sampling_settings(pipeline, args, pipeline_class: str | None = None) -> list[tuple[int | None, dict]]:
    """(steps, the model type's keywords) to sweep, one result each: --num_inference_steps for diffusion
    pipelines, times what the pipeline's model type sweeps (``Objective.evaluation_settings``).
    ``pipeline_class``: the class the pipeline was exported as (a sampler may have swapped it)."""
    from smallgen.objectives import check_evaluation_arguments

    pipeline_class = pipeline_class or (type(pipeline).__name__ if pipeline is not None else "a folder of images")
    objective = objective_for_pipeline(pipeline_class)
    check_evaluation_arguments(objective, pipeline_class, args)
    settings = objective.evaluation_settings(pipeline, args) if objective is not None else [{}]
    if pipeline is None or not is_diffusion_pipeline(pipeline):
        return [(None, setting) for setting in settings]
    return [(steps, setting) for steps in dict.fromkeys(args.num_inference_steps) for setting in settings]


def setting_values(setting: dict) -> dict:
    """A setting's keywords that a result row and a folder name can hold (numbers, text, lists of whole
    numbers; not the label functions)."""
    return {k: v for k, v in setting.items()
            if isinstance(v, (int, float, str)) or (isinstance(v, list) and all(isinstance(i, int) for i in v))}


def setting_name(steps: int | None, setting: dict) -> str:
    def text(value) -> str:
        return f"{value:g}" if isinstance(value, float) else "-".join(map(str, value)) if isinstance(value, list) \
            else str(value)

    return f"steps_{steps}" + "".join(f"_{k}_{text(v)}" for k, v in setting_values(setting).items())


def sampler_eta(pipeline, args) -> float | None:
    """--eta where the pipeline passes it to a scheduler step that takes it (DDIM), else None."""
    from smallgen.sampling import call_accepts

    takes = is_diffusion_pipeline(pipeline) and "eta" in inspect.signature(pipeline.scheduler.step).parameters
    return args.eta if takes and call_accepts(pipeline, "eta") else None



def call_options(pipeline, args, steps: int | None, setting: dict) -> dict:
    """The pipeline call's keywords besides batch_size and the generators: steps, eta and the setting's."""
    options = {}
    if steps is not None:
        check_sampler_steps(pipeline.scheduler, steps)
        options["num_inference_steps"] = steps
    if sampler_eta(pipeline, args) is not None:
        options["eta"] = args.eta
    return {**options, **setting}


def processes() -> tuple[int, int]:
    """(this process's index, the number of processes) under ``accelerate launch``; (0, 1) alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    return _process_state().process_index, _process_state().num_processes



def _process_state():
    """accelerate's PartialState for this launch (CPU processes when asked for or without a GPU)."""
    from datetime import timedelta

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    return PartialState(cpu=cpu, timeout=timedelta(hours=12))  # the main process scores while the others wait



def leave_process_group() -> None:
    """Under several processes: wait until the main process has scored, then all leave the group. A
    process that exits with its gloo group alive while another still works can abort in the group's
    teardown ("terminate called without an active exception", about 1 run in 3 here)."""
    if processes()[1] == 1:
        return
    state = _process_state()
    state.wait_for_everyone()
    state.destroy_process_group()



def main_process_first(world: int):
    from contextlib import nullcontext

    if world == 1:
        return nullcontext()
    return _process_state().main_process_first()



def generate(pipeline, args, steps: int | None, device: torch.device,
             setting: dict | None = None) -> torch.Tensor:
    """``args.num_samples`` images as uint8 (N, 3, H, W) from the pipeline's ``__call__``, image i from
    its own (seed, i) generator: the same seed gives the same images. Under several processes each
    draws a contiguous share of the indices and every process gets all of them back, in order."""
    from contextlib import nullcontext

    from tqdm.auto import tqdm

    from smallgen.sampling import draw_images

    rank, world = processes()
    share = -(-args.num_samples // world)
    first, count = rank * share, max(0, min(share, args.num_samples - rank * share))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    shown = ", ".join(f"{k} {v}" for k, v in setting_values(setting or {}).items())
    desc = "sampling" + (f" ({shown})" if shown else "")
    options = call_options(pipeline, args, steps, setting or {})
    with autocast, tqdm(total=count, desc=desc, unit="img", disable=rank > 0) as bar:
        try:
            images = draw_images(pipeline, count, args.seed, args.batch_size, first_index=first, progress=bar,
                                 **options) if count else None
        except (TypeError, ValueError) as exc:
            if objective_for_pipeline(type(pipeline).__name__) is not None:
                raise
            raise UserError(f"{type(pipeline).__name__} is not an unconditional image pipeline (called with "
                            f"batch_size, generator, output_type='np'): {exc}") from None
    if world == 1:
        return images
    from accelerate.utils import gather_object

    return torch.cat([part for part in gather_object([images]) if part is not None])



def save_pngs(images: torch.Tensor, folder: str) -> None:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(os.path.join(folder, f"{index:06d}.png"))



@dataclass
class Source:
    """Where the samples come from: a pipeline (ready to sample) or a folder of images."""

    model: str
    pipeline: object = None
    pipeline_class: str | None = None
    fixed_samples: torch.Tensor | None = None



def load_source(args, device: torch.device, resolution: int) -> Source:
    """The pipeline (with --scheduler's sampler) or the images of --samples_dir, checked against the
    reference's resolution."""
    if args.samples_dir:
        source = Source(args.samples_dir, fixed_samples=load_samples_dir(args.samples_dir, args.num_samples))
        size = source.fixed_samples.shape[-1]
    else:
        loaded = load_pipeline(args.pipeline, args.trust_remote_code).to(device)
        source = Source(args.pipeline, sampling_pipeline(loaded, args), type(loaded).__name__)
        source.pipeline.set_progress_bar_config(disable=True)
        size = source.pipeline.unet.config.sample_size if is_diffusion_pipeline(source.pipeline) else None
        if size is None:
            probe = dataclasses.replace(args, num_samples=2)
            size = _draw_probe(source.pipeline, probe, device)
        size = size if isinstance(size, int) else (size[0] if size[0] == size[1] else tuple(size))
    if size != resolution:
        raise UserError(f"resolution mismatch: samples are {size}x{size} but the reference images are "
                        f"{resolution}x{resolution}; pass --resolution {size} to resize the reference")
    return source



def _draw_probe(pipeline, args, device: torch.device) -> int:
    """The size of a pipeline's images, from two of them (this process alone)."""
    from smallgen.sampling import draw_images

    setting = sampling_settings(pipeline, args)[0][1]  # a pipeline without a UNet keeps its class
    return draw_images(pipeline, 2, args.seed, 2, **call_options(pipeline, args, None, setting)).shape[-1]



def evaluation_device(args, world: int) -> torch.device:
    if args.device:
        return torch.device(args.device)
    if world > 1:
        return _process_state().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
