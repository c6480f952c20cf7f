"""Command-line and config-file arguments of ``train_unconditional.py``, as dataclasses.

``--config recipe.yaml`` (or .json) sets defaults; flags on the command line override them. Unknown
keys and invalid values are rejected here, before any data or model is loaded. Flag names follow
diffusers' ``examples/unconditional_image_generation/train_unconditional.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass

from smallgen.arguments import build_parser as build_flag_parser
from smallgen.arguments import check_flags, flag, non_default_fields, parse_into, renamed_keys
from smallgen.errors import ConfigError
from smallgen.objectives import MODEL_TYPES, argument_parts, check_model_arguments

LR_SCHEDULER_CHOICES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")  # resize filters (PIL)
MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
LOGGER_CHOICES = ("tensorboard", "wandb", "none")
# --help shows the flags in groups (each field names its own): these, with each model type's own after "model"
GENERAL_HELP_GROUPS = ("data", "model", "optimisation", "checkpoints and logging", "sampling (grids)",
                       "scores while training", "Hub", "speed", "processes")


@dataclass
class DataArguments:
    """Where the images come from and how they are prepared (flag names as in diffusers' example)."""

    dataset_name: str | None = flag(None, "Hub dataset id (uoft-cs/cifar10), or a local dataset folder or file.",
                                    group="data")
    dataset_config_name: str | None = flag(None, "The dataset's configuration name, if it has several.", group="data")
    train_data_dir: str | None = flag(None, "A folder of images (imagefolder layout) or of the Sprites .npy files.",
                                      group="data")
    image_column: str | None = flag(None, "Column holding the images; detected when unset.", group="data")
    cache_dir: str | None = flag(None, "Where downloaded and prepared datasets are cached.", group="data")
    resolution: int = flag(32, "Images are made resolution x resolution.", group="data", at_least=1)
    center_crop: bool = flag(False, "Center-crop after resizing; otherwise a random crop, as diffusers' example.",
                             group="data")
    random_flip: bool = flag(False, "Random horizontal flips in training.", group="data")
    interpolation: str = flag("bilinear", "Resize filter when a resize is needed; 'nearest' suits pixel art.",
                              group="data", choices=INTERPOLATIONS)
    validation_fraction: float = flag(0.05, "Held-out fraction when the dataset has no validation/test split.",
                                      group="data", at_least=0.0, below=1.0)
    split_seed: int = flag(0, "Seed of the held-out validation split.", group="data")
    label_column: str | None = flag(None, "Column of class labels (or context vectors) for --class_conditional; "
                                          "unset: a ClassLabel column or 'label'.", group="data")
    max_train_samples: int | None = flag(None, "Keep only the first N training images (quick runs).", group="data",
                                         at_least=1)
    max_validation_samples: int | None = flag(None, "Keep only the first N validation images.", group="data",
                                              at_least=0)

    def __post_init__(self):
        check_flags(self)


@dataclass
class ModelTypeArguments:
    model_type: str = flag(MODEL_TYPES[0], "What to train: a diffusion model or a baseline.", group="model",
                           choices=MODEL_TYPES)


@dataclass
class ModelArguments(*argument_parts(), ModelTypeArguments):
    """What to train: --model_type and the flags of every model type (each declared, with its checks, in
    its module in smallgen/objectives/); a flag of another model type must stay at its default."""

    def __post_init__(self):
        check_flags(self)
        check_model_arguments(self)


@dataclass
class TrainArguments:
    """The optimisation, checkpoints, logging, export and speed."""

    output_dir: str = flag(f"{MODEL_TYPES[0]}-model", "Run folder; becomes the pipeline folder.", group="checkpoints and logging")
    overwrite_output_dir: bool = flag(False, "Reuse an existing --output_dir.", group="checkpoints and logging")
    seed: int = flag(0, "Seed for weights, data order, noise and samples.", group="optimisation")
    train_batch_size: int = flag(16, "Images per process per micro-batch.", group="optimisation", at_least=1)
    eval_batch_size: int = flag(16, "Batch size for validation and sampling.", group="sampling (grids)", at_least=1)
    num_epochs: int = flag(100, "Passes over the training set (unless --max_train_steps).", group="optimisation",
                           at_least=1)
    max_train_steps: int | None = flag(None, "Optimizer steps; overrides --num_epochs.", group="optimisation",
                                       at_least=1)
    max_train_minutes: float | None = flag(
        None, "Time budget: a short timed warm-up plans the step count, re-planned from the loop's pace (stored in "
              "checkpoints); "
              "overrides --num_epochs, capped by --max_train_steps. Setup, checkpoints, validation and grids "
              "are off the clock.", group="optimisation", above=0)
    gradient_accumulation_steps: int = flag(
        1, "Micro-batches per optimizer step (UNet model types); the lr schedule counts optimizer steps.",
        group="optimisation", at_least=1)
    learning_rate: float = flag(1e-4, "Peak learning rate (after warm-up).", group="optimisation", above=0)
    lr_scheduler: str = flag("cosine", "Learning-rate schedule (diffusers' get_scheduler).", group="optimisation",
                             choices=LR_SCHEDULER_CHOICES)
    lr_warmup_steps: int = flag(500, "Warm-up, in optimizer steps.", group="optimisation", at_least=0)
    adam_beta1: float = flag(0.95, "Adam(W) beta1.", group="optimisation")
    adam_beta2: float = flag(0.999, "Adam(W) beta2.", group="optimisation")
    adam_weight_decay: float = flag(1e-6, "Weight decay (decoupled for the UNets' AdamW).", group="optimisation")
    adam_epsilon: float = flag(1e-8, "Adam(W) epsilon.", group="optimisation")
    max_grad_norm: float | None = flag(1.0, "Gradient clipping; 0 or none disables.", group="optimisation",
                                       at_least=0)
    use_ema: bool = flag(False, "Keep an EMA of the weights; export and sample it.", group="optimisation")
    ema_max_decay: float = flag(0.9999, "Largest EMA decay (the warm-up grows towards it).", group="optimisation",
                                at_least=0, below=1)
    ema_inv_gamma: float = flag(1.0, "EMA warm-up inverse gamma.", group="optimisation")
    ema_power: float = flag(0.75, "EMA warm-up power (3/4: long runs; 2/3: short ones).", group="optimisation")
    ema_warmup: bool = flag(True, "EMA decay warm-up (1 - (1 + step/inv_gamma)^-power).", group="optimisation")
    posthoc_ema: bool = flag(False, "Track power-function EMAs (--posthoc_ema_sigma_rels) and store snapshots in "
                                    "posthoc-ema/, to choose the EMA length after the run with reconstruct_ema.py "
                                    "(UNet model types).", group="optimisation")
    posthoc_ema_sigma_rels: list[float] = flag([0.05, 0.10], "Relative widths of the tracked post-hoc EMA profiles "
                                               "(EDM2's two).", group="optimisation", above=0, below=12 ** -0.5)
    posthoc_ema_every: int | None = flag(None, "Steps between post-hoc EMA snapshots (default: 20 over the run, "
                                               "and the last step).", group="optimisation", at_least=1)
    mixed_precision: str = flag("no", "Autocast precision.", group="speed", choices=MIXED_PRECISION_CHOICES)
    checkpointing_steps: int | None = flag(500, "Save a resumable state every N steps.", group="checkpoints and logging",
                                           at_least=1)
    checkpoints_total_limit: int | None = flag(None, "Keep at most N checkpoints.", group="checkpoints and logging",
                                               at_least=1)
    resume_from_checkpoint: str | None = flag(None, "A checkpoint folder or 'latest'.", group="checkpoints and logging")
    logger: str = flag("tensorboard", "Where to log.", group="checkpoints and logging", choices=LOGGER_CHOICES)
    logging_dir: str = flag("logs", "Under --output_dir.", group="checkpoints and logging")
    logging_steps: int = flag(50, "Log (and check the loss is finite) every N steps.", group="checkpoints and logging",
                              at_least=1)
    save_images_epochs: int | None = flag(
        None, "Sample grids every N epochs and at the end (default: every 10 epochs; with --max_train_minutes, "
              "as many rounds as fit in a tenth of the budget, timed before training; validation then takes "
              "about a twentieth, the last epoch always validated).", group="sampling (grids)", at_least=1)
    num_sample_images: int | None = flag(
        None, "Images per sample grid (default: 16; with --max_train_minutes fewer, down to 4, if a round of 16 "
              "takes more than a tenth of the budget).", group="sampling (grids)", at_least=1)
    evaluate_num_samples: int | None = flag(
        None, "Score the model while it trains: KID, FID, precision and recall of this many samples (the model "
              "type's fast sampler, the same seeds each time) against the reference, logged and drawn as a curve. "
              "Off when unset.", group="scores while training", at_least=2)
    evaluate_every: int | None = flag(
        None, "Score every N optimizer steps and at the last (default: --num_evaluations).",
        group="scores while training", at_least=1)
    num_evaluations: int | None = flag(
        None, "Scores spread evenly over the run, the last at its last step (default: 10; with "
              "--max_train_minutes as many as fit in 15%% of the budget, timed before training, at least the "
              "last).", group="scores while training", at_least=1)
    evaluate_split: str = flag("train", "Reference split, as evaluate_fid.py's --split (papers use train).",
                               group="scores while training")
    evaluate_num_reference: int | None = flag(
        None, "Reference images, a subset drawn as evaluate_fid.py draws it (default: --evaluate_num_samples).",
        group="scores while training", at_least=2)
    keep_best: str | None = flag(
        None, "Export the weights that scored best while training by this score, and say from which step; the "
              "checkpoints keep the last state.", group="scores while training", choices=("kid", "fid"))
    inception_weights: str | None = flag(
        None, "FID Inception weights file (default: found or fetched as evaluate_fid.py does).",
        group="scores while training")
    push_to_hub: bool = flag(False, "Upload the pipeline folder (no checkpoints or logs).", group="Hub")
    hub_model_id: str | None = flag(None, "Repo id; unset: the output folder's name.", group="Hub")
    hub_token: str | None = flag(None, "Token; unset: HF_TOKEN or the cached login. Never saved.", group="Hub")
    hub_private_repo: bool = flag(False, "Create the Hub repository as private.", group="Hub")
    allow_tf32: bool = flag(False, "TF32 matmuls on Ampere+ GPUs.", group="speed")
    channels_last: bool = flag(False, "channels_last memory format.", group="speed")
    torch_compile: bool = flag(False, "torch.compile the network.", group="speed")
    dataset_on_device: str = flag("auto", "Hold the whole uint8 dataset as one tensor on the device (auto: when it "
                                          "fits).", group="speed", choices=("auto", "yes", "no"))
    max_dataset_bytes: int = flag(4 << 30, "Size limit for --dataset_on_device auto.", group="speed", at_least=0)
    cpu_threads: int | None = flag(
        None, "Threads per process when training on the CPU (default: the cores this process may use that "
              "other processes leave free, shared among the run's processes; accelerate launch alone would "
              "leave 1).", group="speed", at_least=1)
    ddp_timeout: float = flag(
        600.0, "Seconds a process waits for the others in a collective call (a peer stuck or gone) before it "
               "stops with a message naming the step; raise it if the main process's sample grids or checkpoints "
               "take longer (torch's default is 1800).", group="processes", above=0)

    def __post_init__(self):
        check_flags(self)
        if self.evaluate_num_samples is None:
            given = [name for name in ("evaluate_every", "num_evaluations", "evaluate_num_reference", "keep_best")
                     if getattr(self, name) is not None]
            if given:
                raise ConfigError(f"--{given[0]} needs --evaluate_num_samples (scores while training are off)")
        for name in ("posthoc_ema_every", "posthoc_ema_sigma_rels"):
            if name in non_default_fields(TrainArguments, self) and not self.posthoc_ema:
                raise ConfigError(f"--{name} needs --posthoc_ema")
        if len(set(self.posthoc_ema_sigma_rels)) != len(self.posthoc_ema_sigma_rels):
            raise ConfigError(f"--posthoc_ema_sigma_rels must differ; got {self.posthoc_ema_sigma_rels}")
        if self.evaluate_every is not None and self.num_evaluations is not None:
            raise ConfigError("pass one of --evaluate_every and --num_evaluations")

    def to_public_dict(self) -> dict:
        """Arguments safe to write down: the token is never saved or logged."""
        values = dataclasses.asdict(self)
        values.pop("hub_token")
        return values


ARGUMENT_CLASSES = (DataArguments, ModelArguments, TrainArguments)


def _valid_keys() -> set[str]:
    return {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}


def load_config_file(path: str) -> dict:
    """A YAML or JSON mapping of flag names to values; ConfigError on anything else."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        with open(path) as f:
            if path.endswith(".json"):
                values = json.load(f)
            else:
                import yaml

                values = yaml.safe_load(f)
    except Exception as exc:
        raise ConfigError(f"could not parse config file {path!r}: {exc}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path!r} must be a mapping of flag names to values")
    values = renamed_keys(values, ARGUMENT_CLASSES, path)
    unknown = sorted(set(values) - _valid_keys())
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {path}: {', '.join(unknown)}. Valid keys: {', '.join(sorted(_valid_keys()))}"
        )
    if "hub_token" in values:
        raise ConfigError(f"{path} holds a hub_token: keep tokens out of files; use HF_TOKEN or --hub_token")
    for key, value in values.items():
        _check_recipe_type(path, key, value)
    return values


def _flag_type(key: str) -> tuple[type, bool]:
    """(the flag's value type, whether it may be None), from the argument classes' annotations."""
    import types
    import typing

    for cls in ARGUMENT_CLASSES:
        hints = typing.get_type_hints(cls)
        if key in hints:
            hint = hints[key]
            if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
                args = [a for a in typing.get_args(hint) if a is not type(None)]
                return args[0], len(args) < len(typing.get_args(hint))
            return hint, False
    raise KeyError(key)


def _check_recipe_type(path: str, key: str, value) -> None:
    """A recipe value of the flag's type (YAML reads 'fast' as text, 1e-4 without a dot as text too)."""
    import typing

    expected, optional = _flag_type(key)
    if value is None and optional:
        return
    if typing.get_origin(expected) is list:  # each item of the item type
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {key} must be a list; got {value!r}")
        for item in value:  # a text item stays text in a list (argparse converts only single values)
            _check_recipe_value(path, key, item, typing.get_args(expected)[0], text_as_number=False)
        return
    _check_recipe_value(path, key, value, expected)


def _check_recipe_value(path: str, key: str, value, expected: type, text_as_number: bool = True) -> None:
    if expected is float and isinstance(value, str) and text_as_number:
        try:
            float(value)
            return
        except ValueError:
            pass
    accepted = (int, float) if expected is float else (expected,)
    if isinstance(value, accepted) and (expected is bool or not isinstance(value, bool)):
        return
    names = {float: "a number", int: "a whole number", bool: "true or false", str: "text"}
    raise ConfigError(f"{path}: {key} must be {names.get(expected, expected.__name__)}; got {value!r}")


DESCRIPTION = f"""Train a generative model (--model_type {', '.join(MODEL_TYPES)}) on small images and export it
as a DiffusionPipeline.

A --config recipe (YAML or JSON) sets defaults for any flag below; flags on the command line win,
and 'none' clears a recipe's optional value (e.g. --dataset_name none --train_data_dir my_images).
Unknown keys and invalid values are refused before anything is loaded."""


def help_groups() -> list[str]:
    """The --help groups in order: the general ones, each model type's own right after "model"."""
    own = [f.metadata["group"] for part in argument_parts() for f in dataclasses.fields(part)]
    own = [g for g in dict.fromkeys(own) if g not in GENERAL_HELP_GROUPS]
    return [*GENERAL_HELP_GROUPS[:2], *own, *GENERAL_HELP_GROUPS[2:]]


def _argument_parser_class():
    """transformers' HfArgumentParser, passing argparse every field metadata key but our "group"."""
    import copy

    from transformers import HfArgumentParser

    class ArgumentParser(HfArgumentParser):
        @staticmethod
        def _parse_dataclass_field(parser, item):
            item = copy.copy(item)
            item.metadata = {k: v for k, v in item.metadata.items() if k != "group"}
            HfArgumentParser._parse_dataclass_field(parser, item)

    return ArgumentParser


def build_parser():
    """The flags of every argument class, grouped for --help, with --config first."""
    parser = build_flag_parser(ARGUMENT_CLASSES, DESCRIPTION, help_groups(),
                               usage="%(prog)s [--config RECIPE.yaml] [--flag value ...]")
    config_action = parser.add_argument("--config", default=None, help="YAML/JSON recipe whose keys are these flags.")
    general = parser._optionals  # argparse keeps groups in private lists; moving actions only changes --help
    general._group_actions.remove(config_action)
    general._group_actions.insert(1, config_action)  # right after -h
    return parser


def parse_args(argv: list[str] | None = None):
    """(DataArguments, ModelArguments, TrainArguments) from ``--config`` and the command line."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    parser = build_parser()
    if known.config:
        parser.set_defaults(**load_config_file(known.config))
    data_args, model_args, train_args = parse_into(parser, argv)[:3]  # then a Namespace holding --config
    return data_args, model_args, train_args
