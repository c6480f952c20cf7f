"""``--model_type consistency``: a consistency model (Song et al. 2023) on a diffusers UNet2DModel,
trained by consistency training as Easy Consistency Tuning does it (Geng et al. 2024), from scratch
or tuned from a finished EDM run (``--init_from runs/quickstart``: its exported, EMA-averaged UNet is
the start). Exported as a ConsistencyPipeline sampling in 1, 2 or 4 steps with diffusers'
CMStochasticIterativeScheduler. The math is ``models/consistency.py``; the UNet, EMA and accumulation
are ``unet_base.py``'s. The gap between the two noise levels of the loss shrinks in ``--ct_stages``
equal stages over the run's optimizer steps (a time budget's steps once it fixes them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from models.consistency import GAP_DECAY, P_MEAN, P_STD, SIGMA_MAX, SIGMA_MIN
from models.edm import SIGMA_DATA
from smallgen.arguments import flag
from smallgen.errors import ConfigError, UserError
from smallgen.objectives.base import ModelCardText
from smallgen.objectives.edm import EDMObjective
from smallgen.objectives.unet_base import UNetArguments, UNetObjective
from smallgen.sampling import Sampler

# diffusers' consistency scheduler: Song et al.'s range, Karras spacing over 40 levels, clipped f.
CM_SCHEDULER = dict(num_train_timesteps=40, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, sigma_data=SIGMA_DATA,
                    rho=7.0, clip_denoised=True)
GRID_STEPS = (1, 2, 4)
INIT_PIPELINES = ("EDMPipeline", "ConsistencyPipeline")  # what --init_from takes: the same c_in and c_noise


@dataclass
class ConsistencyArguments:
    """Consistency training (ECT): where it starts and how the gap between its two noise levels shrinks."""

    init_from: str | None = flag(
        None, "A finished EDM run (its output_dir, a pipeline folder or Hub id) whose exported UNet starts "
              "the training (ECT); unset: from scratch.", group="consistency")
    ct_p_mean: float = flag(P_MEAN, "Mean of ln(t), the larger noise level (ECT: -1.1).", group="consistency")
    ct_p_std: float = flag(P_STD, "Standard deviation of ln(t) (ECT: 2.0).", group="consistency", above=0)
    ct_stages: int = flag(4, "Stages over the run; each divides the gap t - r by --ct_gap_decay.",
                          group="consistency", at_least=1)
    ct_gap_decay: float = flag(GAP_DECAY, "ECT's q: stage s has r = t (1 - q^-(s+1) (1 + 8 sigmoid(-t))).",
                               group="consistency", above=1)
    ct_huber_c: float | None = flag(None, "Pseudo-Huber c of the distance; unset: iCT's 0.00054 sqrt(pixels x "
                                          "channels); 0: the L2 norm (ECT's).", group="consistency", at_least=0)

    @staticmethod
    def check(arguments, objective) -> None:
        if arguments.grid_num_inference_steps != UNetArguments.grid_num_inference_steps:
            raise ConfigError(f"--grid_num_inference_steps does not apply to --model_type consistency: its grids "
                              f"are drawn in {', '.join(map(str, GRID_STEPS))} steps")
        if arguments.init_from and arguments.model_config_name_or_path:
            raise ConfigError("pass --init_from or --model_config_name_or_path, not both: the network of "
                              "--init_from is the one trained")


@dataclass
class ConsistencyEvaluationArguments:
    """evaluate_fid.py: the level a 2-step consistency sample passes through."""

    cm_middle_level: list[int] | None = flag(
        None, "Consistency pipelines, 2 steps: through level i of the scheduler's Karras levels (0: sigma_max; "
              "default 2 steps: the middle one, 20 of 40: sigma 2.24); several values sweep (timesteps=[i, 0]).",
        group="consistency pipelines", at_least=1, nargs="+")


def consistency_evaluation_settings(cls, pipeline, args) -> list[dict]:
    """One setting per --cm_middle_level (the pipeline's ``timesteps=[i, 0]``), else the steps alone."""
    if args.cm_middle_level is None:
        return [{}]
    levels = pipeline.scheduler.config.num_train_timesteps
    if list(args.num_inference_steps) != [2]:
        raise UserError("--cm_middle_level picks the level of a 2-step sample: pass --num_inference_steps 2")
    if max(args.cm_middle_level) >= levels - 1:
        raise UserError(f"--cm_middle_level must be below {levels - 1} (the pipeline's scheduler has {levels} "
                        f"levels, the last sigma_min); got {max(args.cm_middle_level)}")
    return [{"timesteps": [level, 0]} for level in dict.fromkeys(args.cm_middle_level)]


class ConsistencyObjective(UNetObjective):
    name = "consistency"
    arguments = (UNetArguments, ConsistencyArguments)
    pipeline_classes = ("ConsistencyPipeline",)
    samplers = {"cm": Sampler("diffusers:CMStochasticIterativeScheduler")}  # evaluate_fid.py: 1-4 steps
    fast_sampler = ("cm", 1)
    evaluation_arguments = (ConsistencyEvaluationArguments,)
    evaluation_settings = classmethod(consistency_evaluation_settings)

    def __init__(self, data_args, model_args, train_args, labels=None):
        from models.consistency import ConsistencyParameterization

        self.preconditioning = ConsistencyParameterization(SIGMA_DATA, SIGMA_MIN)
        self.progress = StepCount()
        self.stage_steps = 1
        super().__init__(data_args, model_args, train_args, labels)

    @classmethod
    def check_arguments(cls, data_args, model_args, train_args) -> None:
        if model_args.init_from:
            check_init_from(model_args.init_from, data_args.resolution)
        else:
            super().check_arguments(data_args, model_args, train_args)

    def make_unet(self, **condition):
        if not self.model_args.init_from:
            return super().make_unet(**condition)
        from diffusers import UNet2DModel

        return UNet2DModel.from_pretrained(init_folder(self.model_args.init_from), subfolder="unet",
                                           use_safetensors=True)

    def make_loss(self):
        from models.consistency import ConsistencyTrainingLoss

        m = self.model_args
        return ConsistencyTrainingLoss(p_mean=m.ct_p_mean, p_std=m.ct_p_std, gap_decay=m.ct_gap_decay,
                                       huber_c=m.ct_huber_c, sigma_data=SIGMA_DATA, sigma_min=SIGMA_MIN,
                                       sigma_max=SIGMA_MAX)

    def make_schedules(self, max_train_steps: int) -> None:
        """The lr schedules and the stages, both over the run's steps (fixed again by a time budget)."""
        super().make_schedules(max_train_steps)
        self.stage_steps = max(1, -(-max_train_steps // self.model_args.ct_stages))

    def checkpoint_objects(self) -> dict:
        return {**super().checkpoint_objects(), "consistency_progress": self.progress}

    def train_step(self, micro_batches) -> dict[str, torch.Tensor]:
        self.loss.stage = self.progress.steps // self.stage_steps
        logged = super().train_step(micro_batches)
        self.progress.steps += 1
        return logged

    # The network as the loss sees it, (x, sigma) -> f(x; sigma): EDM's wrapper with this preconditioning.
    denoiser = EDMObjective.denoiser

    def grid_samplers(self) -> dict:
        return {f"cm_{steps}step": ("cm", steps, {}) for steps in GRID_STEPS}

    def make_pipeline(self, device="cpu"):
        from diffusers import CMStochasticIterativeScheduler

        from pipelines import ConsistencyPipeline

        return ConsistencyPipeline(unet=self.averaged_unet(device), scheduler=CMStochasticIterativeScheduler(**CM_SCHEDULER))

    def model_card(self) -> ModelCardText:
        m = self.model_args
        start = f"tuned from `{m.init_from}` (Easy Consistency Tuning, Geng et al. 2024)" if m.init_from else \
            "trained from scratch by consistency training (as in Geng et al. 2024)"
        return ModelCardText(
            description=(f"A consistency model (Song et al. 2023) {start} with smallgen's `train_unconditional.py`. "
                         "Load it with `ConsistencyPipeline.from_pretrained` (smallgen installed) or "
                         "`DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`; it samples in 1, 2 or 4 "
                         "steps with diffusers' CMStochasticIterativeScheduler."),
            tags=["consistency-model", "few-step"], arguments={**CM_SCHEDULER, "init_from": m.init_from},
            trust_remote_code=True,
        )


class StepCount:
    """Optimizer steps taken (checkpointed: the stage of a resumed run follows from it)."""

    def __init__(self):
        self.steps = 0

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])


def init_folder(name_or_path: str) -> str:
    """A local pipeline folder as given, else a Hub id's files (model_index.json and the UNet) fetched."""
    if os.path.isdir(name_or_path):
        return name_or_path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name_or_path, allow_patterns=["model_index.json", "unet/*"])
    except Exception as exc:  # offline, unknown repository, bad id: the hub client raises many types
        raise ConfigError(f"--init_from {name_or_path!r} is not a folder and could not be fetched from the Hub "
                          f"({type(exc).__name__}: {exc})") from None


def check_init_from(name_or_path: str, resolution: int) -> None:
    """An EDM (or consistency) pipeline whose UNet is at ``resolution``, else ConfigError with the reason."""
    folder = init_folder(name_or_path)
    try:
        with open(os.path.join(folder, "model_index.json")) as handle:
            pipeline_class = json.load(handle)["_class_name"]
        with open(os.path.join(folder, "unet", "config.json")) as handle:
            unet_config = json.load(handle)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"--init_from {name_or_path}: not a finished run's pipeline folder "
                          f"(model_index.json and unet/config.json: {exc})") from None
    pipeline_class = pipeline_class[-1] if isinstance(pipeline_class, list) else pipeline_class
    if pipeline_class not in INIT_PIPELINES:
        raise ConfigError(f"--init_from {name_or_path} holds a {pipeline_class}; consistency tuning starts from "
                          f"an EDM run ({' or '.join(INIT_PIPELINES)}): its network takes EDM's c_in and c_noise")
    if unet_config.get("sample_size") != resolution:
        raise ConfigError(f"--init_from {name_or_path} was trained at {unet_config.get('sample_size')} px, not "
                          f"--resolution {resolution}")
    if not os.path.exists(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")):
        raise ConfigError(f"--init_from {name_or_path} has no unet/diffusion_pytorch_model.safetensors")
