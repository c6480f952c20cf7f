"""``--model_type flow``: conditional flow matching with straight paths (Lipman et al. 2023; rectified
flow, Liu et al. 2023) on a diffusers UNet2DModel that predicts the velocity, exported as a
FlowMatchPipeline sampling with diffusers' FlowMatchEulerDiscreteScheduler. The math is
``models/flow.py``; the UNet, EMA and accumulation are ``unet_base.py``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.flow import TIMESTEP_DENSITIES, TIMESTEP_SCALE
from smallgen.arguments import flag
from smallgen.objectives.base import ModelCardText
from smallgen.objectives.unet_base import UNetArguments, UNetObjective
from smallgen.sampling import Sampler


@dataclass
class FlowArguments:
    """Where on the path (t in [0, 1], 1 = noise) the velocity is trained."""

    flow_timestep_density: str = flag(
        "uniform", "Density of the training times: uniform, logit_normal (Esser et al. 2024: sigmoid of a "
                   "normal) or mode.", group="flow", choices=TIMESTEP_DENSITIES)
    flow_logit_mean: float = flag(0.0, "logit_normal: mean of the normal (below 0: nearer the data).",
                                  group="flow")
    flow_logit_std: float = flag(1.0, "logit_normal: standard deviation of the normal.", group="flow", above=0)
    flow_mode_scale: float = flag(1.29, "mode: its scale.", group="flow")


class FlowObjective(UNetObjective):
    name = "flow"
    arguments = (UNetArguments, FlowArguments)
    pipeline_classes = ("FlowMatchPipeline",)
    samplers = {"flow-euler": Sampler("diffusers:FlowMatchEulerDiscreteScheduler"),
                "flow-heun": Sampler("diffusers:FlowMatchHeunDiscreteScheduler")}  # 2 evaluations a step but the last
    fast_sampler = ("flow-euler", 20)

    def make_loss(self):
        from models.flow import FlowMatchingLoss

        m = self.model_args
        return FlowMatchingLoss(m.flow_timestep_density, m.flow_logit_mean, m.flow_logit_std, m.flow_mode_scale)

    def denoiser(self, network, labels=None):
        """The network as the loss sees it: (x_t, t) -> velocity, the UNet given timestep 1000 t."""
        def velocity(noisy, t):
            return network(self.memory_format(noisy), t * TIMESTEP_SCALE).sample

        return velocity

    def grid_samplers(self) -> dict:
        """diffusers' flow-matching Euler and Heun, --grid_num_inference_steps each."""
        steps = self.model_args.grid_num_inference_steps
        return {"flow_euler": ("flow-euler", steps, {}), "flow_heun": ("flow-heun", steps, {})}

    def make_pipeline(self, device="cpu"):
        from diffusers import FlowMatchEulerDiscreteScheduler

        from pipelines import FlowMatchPipeline

        return FlowMatchPipeline(unet=self.averaged_unet(device),
                                 scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=TIMESTEP_SCALE))

    def model_card(self) -> ModelCardText:
        m = self.model_args
        return ModelCardText(
            description=("A flow-matching model (straight paths, velocity prediction; Lipman et al. 2023, Liu et al. "
                         f"2023; {m.flow_timestep_density} training times) trained with smallgen's "
                         "`train_unconditional.py`. Load it with `FlowMatchPipeline.from_pretrained` (smallgen "
                         "installed) or `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`; it samples "
                         "with diffusers' FlowMatchEulerDiscreteScheduler, and FlowMatchHeunDiscreteScheduler swaps in."),
            tags=["flow-matching", "rectified-flow"],
            arguments={"flow_timestep_density": m.flow_timestep_density, "flow_logit_mean": m.flow_logit_mean,
                       "flow_logit_std": m.flow_logit_std}, trust_remote_code=True,
        )
