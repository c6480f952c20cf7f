"""``--model_type ddpm``: a diffusers UNet2DModel trained with the DDPM loss (Ho et al. 2020, optionally
min-SNR weighted), exported as diffusers' DDPMPipeline. The math is ``models/schedulers.py`` and
``models/losses.py``; the UNet, EMA and accumulation are ``unet_base.py``'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from models.schedulers import BETA_SCHEDULES, PREDICTION_TYPES, VARIANCE_TYPES
from smallgen.arguments import flag
from smallgen.errors import ConfigError
from smallgen.objectives.base import ModelCardText
from smallgen.objectives.unet_base import UNetArguments, UNetObjective
from smallgen.sampling import Sampler

# diffusers' DDPM-family schedulers, made from the saved DDPMScheduler config: ("module:Class", options)
DDPM_SCHEDULERS = {
    "ddpm": ("diffusers:DDPMScheduler", {}),
    "ddim": ("diffusers:DDIMScheduler", {}),
    "dpmsolver++": ("diffusers:DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmsolver++3m": ("diffusers:DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
    "unipc": ("diffusers:UniPCMultistepScheduler", {}),
    # Karras et al.'s Euler in sigma space: scales the input and the first noise
    "euler": ("diffusers:EulerDiscreteScheduler", {}),
}
# evaluate_fid.py --scheduler for an exported DDPMPipeline: the samplers diffusers' own pipelines run
# right. DDIMPipeline takes eta; DDPMPipeline neither scales the model input or the first noise
# (Euler needs both) nor leaves out the generator a step does not take (UniPC's), so those two are
# not offered for it (the class-conditional pipeline, ours, runs them all).
DDPM_SAMPLERS = {
    "ddpm": Sampler(*DDPM_SCHEDULERS["ddpm"], "diffusers:DDPMPipeline"),
    "ddim": Sampler(*DDPM_SCHEDULERS["ddim"], "diffusers:DDIMPipeline"),
    "dpmsolver++": Sampler(*DDPM_SCHEDULERS["dpmsolver++"], "diffusers:DDPMPipeline"),
    "dpmsolver++3m": Sampler(*DDPM_SCHEDULERS["dpmsolver++3m"], "diffusers:DDPMPipeline"),
}


@dataclass
class DDPMArguments:
    """The noise process of a DDPM, its loss weighting and its grid samplers."""

    ddpm_num_steps: int = flag(1000, "Training timesteps T.", group="ddpm", at_least=2)
    ddpm_beta_schedule: str = flag("linear", "Noise schedule (cosine = squaredcos_cap_v2).", group="ddpm",
                                   choices=BETA_SCHEDULES)
    beta_start: float = flag(1e-4, "First beta (linear/scaled_linear/sigmoid).", group="ddpm")
    beta_end: float = flag(0.02, "Last beta (linear/scaled_linear/sigmoid).", group="ddpm")
    prediction_type: str = flag("epsilon", "What the network predicts.", group="ddpm", choices=PREDICTION_TYPES)
    snr_gamma: float | None = flag(None, "Min-SNR loss weighting gamma (Hang et al. 2023); 5.0 is typical.",
                                   group="ddpm", above=0)
    variance_type: str = flag("fixed_small", "DDPM sampling variance (fixed_large: the DDPM paper's CIFAR-10).",
                              group="sampling (grids)", choices=VARIANCE_TYPES)
    ddpm_num_inference_steps: int | None = flag(
        None, "DDPM steps of the sample grids (default: T with a GPU; on the CPU no DDPM grid, as T steps take "
              "minutes there).", group="sampling (grids)")
    ddim_eta: float = flag(0.0, "DDIM eta for sample grids (0 = deterministic).", group="sampling (grids)",
                           at_least=0)

    @staticmethod
    def check(arguments, objective) -> None:
        for name in ("ddpm_num_inference_steps", "grid_num_inference_steps"):
            steps = getattr(arguments, name)
            if steps is not None and not 1 <= steps <= arguments.ddpm_num_steps:
                raise ConfigError(f"--{name} must be between 1 and --ddpm_num_steps={arguments.ddpm_num_steps}; "
                                  f"got {steps}")
        if not 0 < arguments.beta_start < arguments.beta_end < 1:
            raise ConfigError(f"need 0 < --beta_start < --beta_end < 1; got {arguments.beta_start}, {arguments.beta_end}")


def diffusers_beta_schedule(model_args) -> str:
    return "squaredcos_cap_v2" if model_args.ddpm_beta_schedule == "cosine" else model_args.ddpm_beta_schedule


def scheduler_config(model_args) -> dict:
    """diffusers' DDPMScheduler arguments for this run: the exported scheduler and our samplers alike."""
    from models.schedulers import make_betas

    config = dict(num_train_timesteps=model_args.ddpm_num_steps, beta_start=model_args.beta_start,
                  beta_end=model_args.beta_end, beta_schedule=diffusers_beta_schedule(model_args),
                  prediction_type=model_args.prediction_type, variance_type=model_args.variance_type,
                  clip_sample=True)
    if model_args.ddpm_beta_schedule == "sigmoid":
        # diffusers' DDIMScheduler has no sigmoid schedule: store the betas so DDIM loads too.
        config["trained_betas"] = make_betas("sigmoid", model_args.ddpm_num_steps, model_args.beta_start,
                                             model_args.beta_end).tolist()
    return config


class DiffusionObjective(UNetObjective):
    name = "ddpm"
    arguments = (UNetArguments, DDPMArguments)
    pipeline_classes = ("DDPMPipeline", "DDIMPipeline")
    samplers = DDPM_SAMPLERS
    fast_sampler = ("ddim", 50)

    def make_loss(self):
        from models.losses import DiffusionLoss
        from models.schedulers import NoiseSchedule

        m = self.model_args
        schedule = NoiseSchedule(m.ddpm_num_steps, m.beta_start, m.beta_end, m.ddpm_beta_schedule, m.prediction_type)
        return DiffusionLoss(schedule, m.snr_gamma)

    def denoiser(self, network, labels=None):
        """The network as the loss sees it: (x_t, t) -> prediction."""
        def predict(noisy, timesteps):
            return network(self.memory_format(noisy), timesteps).sample

        return predict

    def grid_samplers(self) -> dict:
        """DDPM (--ddpm_num_inference_steps; unset, T steps with a GPU and none on the CPU) and DDIM
        (--grid_num_inference_steps, --ddim_eta)."""
        m = self.model_args
        ddpm_steps = m.ddpm_num_inference_steps
        if ddpm_steps is None and self.accelerator.device.type != "cpu":
            ddpm_steps = m.ddpm_num_steps
        grids = {} if ddpm_steps is None else {"ddpm": ("ddpm", ddpm_steps, {})}
        return {**grids, "ddim": ("ddim", m.grid_num_inference_steps, {"eta": m.ddim_eta})}

    def make_pipeline(self, device="cpu"):
        from diffusers import DDPMPipeline, DDPMScheduler

        return DDPMPipeline(unet=self.averaged_unet(device), scheduler=DDPMScheduler(**scheduler_config(self.model_args)))

    def model_card(self) -> ModelCardText:
        m = self.model_args
        config = scheduler_config(m)
        return ModelCardText(
            description=(f"A DDPM ({m.ddpm_beta_schedule} schedule, T = {m.ddpm_num_steps}, {m.prediction_type} "
                         "prediction) trained with smallgen's `train_unconditional.py`. Load it with `DDPMPipeline` "
                         "or, for fast sampling, `DDIMPipeline`."),
            tags=["ddpm", "ddim"],
            arguments={**{k: v for k, v in config.items() if k != "trained_betas"},
                       **{k: v for k, v in dataclasses.asdict(m).items() if k.startswith(("snr", "model_config"))}},
        )
