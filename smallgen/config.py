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
from dataclasses import dataclass, field

from models.edm import P_MEAN, P_STD
from models.schedulers import BETA_SCHEDULES, PREDICTION_TYPES, VARIANCE_TYPES
from smallgen.errors import ConfigError, DataError
from smallgen.objectives import MODEL_TYPES

BETA_SCHEDULE_CHOICES = BETA_SCHEDULES  # the math defines what exists
PREDICTION_TYPE_CHOICES = PREDICTION_TYPES
VARIANCE_TYPE_CHOICES = VARIANCE_TYPES
LR_SCHEDULER_CHOICES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")  # resize filters (PIL)
MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
LOGGER_CHOICES = ("tensorboard", "wandb", "none")
BASELINE_LATENT_DIMS = {"vae": 128, "dcgan": 100, "vaegan": 256}  # seeds 002/003


def _choice(help_text: str, choices, default):
    return field(default=default, metadata={"help": help_text, "choices": list(choices)})


def _check_choice(flag: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"--{flag} must be one of {', '.join(map(str, choices))}; got {value!r}")


@dataclass
class DataArguments:
    """Where the images come from and how they are prepared (flag names as in diffusers' example)."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id (uoft-cs/cifar10), or a local dataset folder or file."},
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The dataset's configuration name, if it has several."}
    )
    train_data_dir: str | None = field(
        default=None,
        metadata={"help": "A folder of images (imagefolder layout) or of the Sprites .npy files."},
    )
    image_column: str | None = field(
        default=None, metadata={"help": "Column holding the images; detected when unset."}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where downloaded and prepared datasets are cached."}
    )
    resolution: int = field(default=32, metadata={"help": "Images are made resolution x resolution."})
    center_crop: bool = field(
        default=False,
        metadata={"help": "Center-crop after resizing; otherwise a random crop, as diffusers' example."},
    )
    random_flip: bool = field(default=False, metadata={"help": "Random horizontal flips in training."})
    interpolation: str = field(
        default="bilinear",
        metadata={"help": "Resize filter when a resize is needed; 'nearest' suits pixel art.",
                  "choices": INTERPOLATIONS},
    )
    validation_fraction: float = field(
        default=0.05,
        metadata={"help": "Held-out fraction when the dataset has no validation/test split."},
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the held-out validation split."})
    label_column: str | None = field(
        default=None, metadata={"help": "Column of class labels (or context vectors) for --class_conditional; "
                                        "unset: a ClassLabel column or 'label'."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training images (quick runs)."}
    )
    max_validation_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation images."}
    )

    def __post_init__(self):
        if self.resolution < 1:
            raise DataError(f"--resolution must be a positive number of pixels, got {self.resolution}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise DataError(f"--validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(
                f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
            )


@dataclass
class ModelArguments:
    """What to train: a diffusion UNet and its noise process, or a baseline (VAE, DCGAN, VAE-GAN)."""

    model_type: str = _choice("What to train: a diffusion model or a baseline.", MODEL_TYPES, "ddpm")
    model_config_name_or_path: str | None = field(
        default=None,
        metadata={"help": "UNet config: a JSON file, a name in configs/models/, or a pipeline folder "
                          "Unset: unet-sprites16 at <= 16 px, else unet-small-cifar10."},
    )
    ddpm_num_steps: int = field(default=1000, metadata={"help": "Training timesteps T."})
    ddpm_beta_schedule: str = _choice("Noise schedule (cosine = squaredcos_cap_v2).", BETA_SCHEDULE_CHOICES, "linear")
    beta_start: float = field(default=1e-4, metadata={"help": "First beta (linear/scaled_linear/sigmoid)."})
    beta_end: float = field(default=0.02, metadata={"help": "Last beta (linear/scaled_linear/sigmoid)."})
    prediction_type: str = _choice("What the network predicts.", PREDICTION_TYPE_CHOICES, "epsilon")
    variance_type: str = _choice("DDPM sampling variance (fixed_large: the DDPM paper's CIFAR-10).",
                                 VARIANCE_TYPE_CHOICES, "fixed_small")
    snr_gamma: float | None = field(
        default=None, metadata={"help": "Min-SNR loss weighting gamma (Hang et al. 2023); 5.0 is typical."}
    )
    edm_p_mean: float = field(
        default=P_MEAN, metadata={"help": "edm: mean of ln(sigma) at training (Karras et al.'s -1.2; lower: lower noise)."}
    )
    edm_p_std: float = field(default=P_STD, metadata={"help": "edm: standard deviation of ln(sigma) at training."})
    ddpm_num_inference_steps: int = field(default=1000, metadata={"help": "DDPM steps for sample grids."})
    ddim_num_inference_steps: int = field(default=50, metadata={"help": "DDIM steps for sample grids."})
    ddim_eta: float = field(default=0.0, metadata={"help": "DDIM eta for sample grids (0 = deterministic)."})
    latent_dim: int | None = field(
        default=None, metadata={"help": "Baselines' latent size; unset: vae 128, dcgan 100, vaegan 256."}
    )
    base_channels: int = field(default=64, metadata={"help": "Baselines' first conv width (doubles per level)."})
    kl_weight: float = field(default=1.0, metadata={"help": "VAE / VAE-GAN weight of the KL term."})
    adversarial_weight: float = field(default=0.1, metadata={"help": "VAE-GAN weight of the adversarial term."})
    class_conditional: bool = field(
        default=False, metadata={"help": "ddpm: condition the UNet on --label_column (classifier-free guidance)."}
    )
    condition_dropout: float = field(
        default=0.1, metadata={"help": "Probability of training a step's image without its label (Ho & Salimans)."}
    )
    guidance_scale: float = field(
        default=2.0, metadata={"help": "Guidance for the sample grids and the pipeline's default (1: conditional)."}
    )

    def __post_init__(self):
        _check_choice("model_type", self.model_type, MODEL_TYPES)
        _check_choice("ddpm_beta_schedule", self.ddpm_beta_schedule, BETA_SCHEDULE_CHOICES)
        _check_choice("prediction_type", self.prediction_type, PREDICTION_TYPE_CHOICES)
        _check_choice("variance_type", self.variance_type, VARIANCE_TYPE_CHOICES)
        if self.ddpm_num_steps < 2:
            raise ConfigError(f"--ddpm_num_steps must be at least 2; got {self.ddpm_num_steps}")
        for flag in ("ddpm_num_inference_steps", "ddim_num_inference_steps"):
            steps = getattr(self, flag)
            if not 1 <= steps <= self.ddpm_num_steps:
                raise ConfigError(f"--{flag} must be between 1 and --ddpm_num_steps={self.ddpm_num_steps}; got {steps}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(f"need 0 < --beta_start < --beta_end < 1; got {self.beta_start}, {self.beta_end}")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ConfigError(f"--snr_gamma must be positive; got {self.snr_gamma}")
        if self.edm_p_std <= 0:
            raise ConfigError(f"--edm_p_std must be positive; got {self.edm_p_std}")
        if self.model_type != "edm" and (self.edm_p_mean, self.edm_p_std) != (P_MEAN, P_STD):
            raise ConfigError("--edm_p_mean and --edm_p_std apply to --model_type edm")
        if self.model_type not in ("ddpm", "edm") and self.model_config_name_or_path is not None:
            raise ConfigError("--model_config_name_or_path names a UNet config (ddpm and edm); size baselines with "
                              "--latent_dim and --base_channels")
        if self.latent_dim is None and self.model_type in BASELINE_LATENT_DIMS:
            self.latent_dim = BASELINE_LATENT_DIMS[self.model_type]
        if (self.latent_dim is not None and self.latent_dim < 1) or self.base_channels < 1:
            raise ConfigError("--latent_dim and --base_channels must be positive")
        if self.kl_weight < 0 or self.adversarial_weight < 0:
            raise ConfigError("--kl_weight and --adversarial_weight must be non-negative")
        if self.class_conditional and self.model_type != "ddpm":
            raise ConfigError("--class_conditional applies to --model_type ddpm")
        if not 0 <= self.condition_dropout < 1:
            raise ConfigError(f"--condition_dropout must be in [0, 1); got {self.condition_dropout}")
        if self.guidance_scale < 0:
            raise ConfigError(f"--guidance_scale must be non-negative; got {self.guidance_scale}")

    @property
    def diffusers_beta_schedule(self) -> str:
        return "squaredcos_cap_v2" if self.ddpm_beta_schedule == "cosine" else self.ddpm_beta_schedule


@dataclass
class TrainArguments:
    """The optimisation, checkpoints, logging, export and speed."""

    output_dir: str = field(default="ddpm-model", metadata={"help": "Run folder; becomes the pipeline folder."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Reuse an existing --output_dir."})
    seed: int = field(default=0, metadata={"help": "Seed for weights, data order, noise and samples."})
    train_batch_size: int = field(default=16, metadata={"help": "Images per process per micro-batch."})
    eval_batch_size: int = field(default=16, metadata={"help": "Batch size for validation and sampling."})
    num_epochs: int = field(default=100, metadata={"help": "Passes over the training set (unless --max_train_steps)."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Optimizer steps; overrides --num_epochs."})
    max_train_minutes: float | None = field(default=None, metadata={
        "help": "Time budget: a short timed warm-up fixes the step count (logged, kept by resumes) to fill it; "
                "overrides --num_epochs, capped by --max_train_steps. Setup, checkpoints, validation and grids "
                "are off the clock."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches per optimizer step (ddpm); the lr schedule counts optimizer steps."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (after warm-up)."})
    lr_scheduler: str = _choice("Learning-rate schedule (diffusers' get_scheduler).", LR_SCHEDULER_CHOICES, "cosine")
    lr_warmup_steps: int = field(default=500, metadata={"help": "Warm-up, in optimizer steps."})
    adam_beta1: float = field(default=0.95, metadata={"help": "Adam(W) beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam(W) beta2."})
    adam_weight_decay: float = field(default=1e-6, metadata={"help": "Weight decay (decoupled for ddpm's AdamW)."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Adam(W) epsilon."})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Gradient clipping; 0 or none disables."})
    use_ema: bool = field(default=False, metadata={"help": "Keep an EMA of the weights; export and sample it."})
    ema_max_decay: float = field(default=0.9999, metadata={"help": "Largest EMA decay (the warm-up grows towards it)."})
    ema_inv_gamma: float = field(default=1.0, metadata={"help": "EMA warm-up inverse gamma."})
    ema_power: float = field(default=0.75, metadata={"help": "EMA warm-up power (3/4: long runs; 2/3: short ones)."})
    ema_warmup: bool = field(default=True, metadata={"help": "EMA decay warm-up (1 - (1 + step/inv_gamma)^-power)."})
    mixed_precision: str = _choice("Autocast precision.", MIXED_PRECISION_CHOICES, "no")
    checkpointing_steps: int | None = field(default=500, metadata={"help": "Save a resumable state every N steps."})
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Keep at most N checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "A checkpoint folder or 'latest'."})
    logger: str = _choice("Where to log.", LOGGER_CHOICES, "tensorboard")
    logging_dir: str = field(default="logs", metadata={"help": "Under --output_dir."})
    logging_steps: int = field(default=50, metadata={"help": "Log (and check the loss is finite) every N steps."})
    save_images_epochs: int = field(default=10, metadata={"help": "Sample grids every N epochs (and at the end)."})
    num_sample_images: int = field(default=16, metadata={"help": "Images per sample grid."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the pipeline folder (no checkpoints or logs)."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repo id; unset: the output folder's name."})
    hub_token: str | None = field(default=None, metadata={"help": "Token; unset: HF_TOKEN or the cached login. Never saved."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})
    allow_tf32: bool = field(default=False, metadata={"help": "TF32 matmuls on Ampere+ GPUs."})
    channels_last: bool = field(default=False, metadata={"help": "channels_last memory format."})
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the network."})
    dataset_on_device: str = _choice(
        "Hold the whole uint8 dataset as one tensor on the device (auto: when it fits).", ("auto", "yes", "no"), "auto"
    )
    max_dataset_bytes: int = field(default=4 << 30, metadata={"help": "Size limit for --dataset_on_device auto."})
    cpu_threads: int | None = field(default=None, metadata={
        "help": "Threads per process when training on the CPU (default: the cores this process may use, shared "
                "among the processes; accelerate launch alone would leave 1)."})

    def __post_init__(self):
        _check_choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULER_CHOICES)
        _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION_CHOICES)
        _check_choice("logger", self.logger, LOGGER_CHOICES)
        _check_choice("dataset_on_device", self.dataset_on_device, ("auto", "yes", "no"))
        positive = ("train_batch_size", "eval_batch_size", "num_epochs", "gradient_accumulation_steps",
                    "logging_steps", "save_images_epochs", "num_sample_images")
        for flag in positive:
            if getattr(self, flag) < 1:
                raise ConfigError(f"--{flag} must be at least 1; got {getattr(self, flag)}")
        for flag in ("max_train_steps", "checkpointing_steps", "checkpoints_total_limit", "cpu_threads"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise ConfigError(f"--{flag} must be at least 1 (or left unset); got {value}")
        if self.max_train_minutes is not None and not self.max_train_minutes > 0:
            raise ConfigError(f"--max_train_minutes must be positive (or left unset); got {self.max_train_minutes}")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning_rate must be positive; got {self.learning_rate}")
        if not 0 <= self.ema_max_decay < 1:
            raise ConfigError(f"--ema_max_decay must be in [0, 1); got {self.ema_max_decay}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            self.max_grad_norm = None

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
    expected, optional = _flag_type(key)
    if value is None and optional:
        return
    if expected is float and isinstance(value, str):
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


HELP_GROUPS = {  # --help shows the flags in these groups, in this order
    "data": [f.name for f in dataclasses.fields(DataArguments)],
    "model": ["model_type", "model_config_name_or_path", "class_conditional", "condition_dropout", "latent_dim",
              "base_channels", "kl_weight", "adversarial_weight"],
    "diffusion": ["ddpm_num_steps", "ddpm_beta_schedule", "beta_start", "beta_end", "prediction_type", "snr_gamma",
                  "edm_p_mean", "edm_p_std"],
    "optimisation": ["seed", "train_batch_size", "num_epochs", "max_train_steps", "max_train_minutes",
                     "gradient_accumulation_steps",
                     "learning_rate", "lr_scheduler", "lr_warmup_steps", "adam_beta1", "adam_beta2",
                     "adam_weight_decay", "adam_epsilon", "max_grad_norm", "use_ema", "ema_max_decay",
                     "ema_inv_gamma", "ema_power", "ema_warmup", "no_ema_warmup"],
    "checkpoints and logging": ["output_dir", "overwrite_output_dir", "checkpointing_steps",
                                "checkpoints_total_limit", "resume_from_checkpoint", "logger", "logging_dir",
                                "logging_steps"],
    "sampling (grids)": ["eval_batch_size", "save_images_epochs", "num_sample_images", "guidance_scale",
                         "variance_type",
                         "ddpm_num_inference_steps", "ddim_num_inference_steps", "ddim_eta"],
    "Hub": ["push_to_hub", "hub_model_id", "hub_token", "hub_private_repo"],
    "speed": ["mixed_precision", "allow_tf32", "channels_last", "torch_compile", "dataset_on_device",
              "max_dataset_bytes", "cpu_threads"],
}
DESCRIPTION = """Train a DDPM or a baseline (VAE, DCGAN, VAE-GAN) on small images and export a DiffusionPipeline.

A --config recipe (YAML or JSON) sets defaults for any flag below; flags on the command line win,
and 'none' clears a recipe's optional value (e.g. --dataset_name none --train_data_dir my_images).
Unknown keys and invalid values are refused before anything is loaded."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults once per flag ('unset' for None), never after a help text that explains its own."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or "unset" in text.lower() or action.default in (argparse.SUPPRESS,):
            return text
        if action.default is None:
            return f"{text} (default: unset)" if action.option_strings else text
        return super()._get_help_string(action)


def _none_or(convert):
    """An optional flag's type: 'none' clears it (a recipe's value too), anything else is converted."""
    def parse(value: str):
        return None if value.lower() == "none" else convert(value)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names it in errors
    return parse


def build_parser():
    """The flags of every argument class, grouped for --help, with --config first."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ARGUMENT_CLASSES, description=DESCRIPTION, formatter_class=_HelpFormatter,
                              usage="%(prog)s [--config RECIPE.yaml] [--flag value ...]")
    config_action = parser.add_argument("--config", default=None, help="YAML/JSON recipe whose keys are these flags.")
    general = parser._optionals  # argparse keeps groups in private lists; moving actions only changes --help
    general._group_actions.remove(config_action)
    general._group_actions.insert(1, config_action)  # right after -h
    optional = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.default is None}
    for title, names in HELP_GROUPS.items():
        group = parser.add_argument_group(title)
        for action in [a for a in general._group_actions if a.dest in names]:
            general._group_actions.remove(action)
            group._group_actions.append(action)
            if action.dest in optional and action.type is not None:
                action.type = _none_or(action.type)
    return parser


def parse_args(argv: list[str] | None = None):
    """(DataArguments, ModelArguments, TrainArguments) from ``--config`` and the command line."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    parser = build_parser()
    if known.config:
        parser.set_defaults(**load_config_file(known.config))
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as exc:  # a dataclass check outside ConfigError (e.g. a bad type in the YAML)
        raise ConfigError(str(exc)) from exc
    if remaining:
        raise ConfigError(f"unknown argument(s): {' '.join(remaining)} (see --help)")
    data_args, model_args, train_args = parsed[:3]  # then a Namespace holding --config
    return data_args, model_args, train_args
