"""``--model_type meanflow``: MeanFlow (Geng et al. 2025), a one-step generator trained from scratch on a
diffusers UNet2DModel that predicts the average velocity u(z_t, r, t), exported as a MeanFlowPipeline
sampling in 1 or 2 calls. The math is ``models/meanflow.py``; the UNet, EMA and accumulation are
``unet_base.py``'s. The UNet takes both times as diffusers' UNet can: t as its timestep and t - r
through a second timestep embedding (``class_embed_type="timestep"``), each times
``pipelines.pipeline_meanflow.TIME_SCALE``.
"""

from __future__ import annotations

from dataclasses import dataclass

from smallgen.arguments import flag
from smallgen.errors import ConfigError
from smallgen.objectives.base import ModelCardText
from smallgen.objectives.unet_base import UNetArguments, UNetObjective
from smallgen.sampling import Sampler

GRID_STEPS = (1, 2)


@dataclass
class MeanFlowArguments:
    """How (r, t) are drawn and the loss weighted (defaults: the paper's ImageNet ablation, its Table 1)."""

    meanflow_ratio: float = flag(0.25, "Fraction of the (r, t) pairs with r < t; the rest have r = t (flow "
                                       "matching).", group="meanflow", at_least=0)
    meanflow_logit_mean: float = flag(-0.4, "Mean of the normal whose sigmoid draws r and t.", group="meanflow")
    meanflow_logit_std: float = flag(1.0, "Standard deviation of that normal.", group="meanflow", above=0)
    meanflow_weighting_power: float = flag(1.0, "p of the adaptive weight 1 / (error + 1e-3)^p (0: plain L2).",
                                           group="meanflow", at_least=0)

    @staticmethod
    def check(arguments, objective) -> None:
        if arguments.meanflow_ratio > 1:
            raise ConfigError(f"--meanflow_ratio must be at most 1 (a fraction of the pairs); got {arguments.meanflow_ratio}")
        if arguments.grid_num_inference_steps != UNetArguments.grid_num_inference_steps:
            raise ConfigError(f"--grid_num_inference_steps does not apply to --model_type meanflow: its grids "
                              f"are drawn in {' and '.join(map(str, GRID_STEPS))} steps")


class MeanFlowObjective(UNetObjective):
    name = "meanflow"
    arguments = (UNetArguments, MeanFlowArguments)
    pipeline_classes = ("MeanFlowPipeline",)
    samplers = {"meanflow": Sampler("diffusers:FlowMatchEulerDiscreteScheduler")}  # evaluate_fid.py: 1 or 2 steps
    fast_sampler = ("meanflow", 1)

    def make_unet(self, **condition):
        return super().make_unet(class_embed_type="timestep", **condition)  # the embedding of t - r

    def make_loss(self):
        from models.meanflow import MeanFlowLoss

        m = self.model_args
        return MeanFlowLoss(m.meanflow_ratio, m.meanflow_logit_mean, m.meanflow_logit_std, m.meanflow_weighting_power)

    def denoiser(self, network, labels=None):
        """The network as the loss sees it: (z_t, r, t) -> u, the UNet given 10 t and 10 (t - r)."""
        from pipelines.pipeline_meanflow import TIME_SCALE

        def average_velocity(noisy, start, end):
            return network(self.memory_format(noisy), end * TIME_SCALE, class_labels=(end - start) * TIME_SCALE).sample

        return average_velocity

    def grid_samplers(self) -> dict:
        return {f"meanflow_{steps}step": ("meanflow", steps, {}) for steps in GRID_STEPS}

    def make_pipeline(self, device="cpu"):
        from diffusers import FlowMatchEulerDiscreteScheduler

        from pipelines import MeanFlowPipeline

        return MeanFlowPipeline(unet=self.averaged_unet(device), scheduler=FlowMatchEulerDiscreteScheduler())

    def model_card(self) -> ModelCardText:
        m = self.model_args
        return ModelCardText(
            description=("A MeanFlow model (average velocity over [r, t]; Geng et al. 2025, arXiv 2505.13447) trained "
                         "from scratch with smallgen's `train_unconditional.py`. Load it with "
                         "`MeanFlowPipeline.from_pretrained` (smallgen installed) or "
                         "`DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`; one call an image "
                         "(`num_inference_steps=1`), or 2."),
            tags=["meanflow", "one-step", "flow-matching"],
            arguments={"meanflow_ratio": m.meanflow_ratio, "meanflow_logit_mean": m.meanflow_logit_mean,
                       "meanflow_logit_std": m.meanflow_logit_std,
                       "meanflow_weighting_power": m.meanflow_weighting_power}, trust_remote_code=True,
        )
