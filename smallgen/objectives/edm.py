"""``--model_type edm``: a diffusers UNet2DModel trained with the EDM formulation (Karras et al.
2022: preconditioning, log-normal noise levels, their loss weighting), exported as an EDMPipeline
with diffusers' EDMEulerScheduler. The math is in ``models/edm.py``; the UNet, EMA and
accumulation are ``unet_base.py``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.edm import P_MEAN, P_STD, SIGMA_DATA
from smallgen.arguments import flag
from smallgen.objectives.base import ModelCardText
from smallgen.objectives.unet_base import UNetArguments, UNetObjective
from smallgen.sampling import Sampler

# diffusers' EDM scheduler settings: the paper's noise range and Karras sigma spacing.
EDM_SCHEDULER = dict(sigma_min=0.002, sigma_max=80.0, rho=7.0, prediction_type="epsilon", sigma_schedule="karras")


@dataclass
class EDMArguments:
    """EDM's training noise-level distribution: ln(sigma) ~ N(P_mean, P_std^2)."""

    edm_p_mean: float = flag(P_MEAN, "Mean of ln(sigma) at training (Karras et al.'s -1.2; lower: lower noise).",
                             group="edm")
    edm_p_std: float = flag(P_STD, "Standard deviation of ln(sigma) at training.", group="edm", above=0)


class EDMObjective(UNetObjective):
    name = "edm"
    arguments = (UNetArguments, EDMArguments)
    pipeline_classes = ("EDMPipeline",)
    # evaluate_fid.py --scheduler: diffusers' EDM schedulers, our EDM Heun (2 evaluations a step but the
    # last) and diffusers' UniPC speaking EDM
    samplers = {"edm-euler": Sampler("diffusers:EDMEulerScheduler"),
                "edm-dpmsolver": Sampler("diffusers:EDMDPMSolverMultistepScheduler"),
                "edm-heun": Sampler("pipelines.scheduling_edm_heun:EDMHeunScheduler"),
                "edm-unipc": Sampler("pipelines.scheduling_edm_unipc:EDMUniPCScheduler")}
    fast_sampler = ("edm-dpmsolver", 10)

    def __init__(self, data_args, model_args, train_args, labels=None):
        from models.edm import EDMPreconditioning

        self.preconditioning = EDMPreconditioning(SIGMA_DATA)
        super().__init__(data_args, model_args, train_args, labels)

    def make_loss(self):
        from models.edm import EDMLoss

        return EDMLoss(p_mean=self.model_args.edm_p_mean, p_std=self.model_args.edm_p_std, sigma_data=SIGMA_DATA)

    def scheduler_config(self) -> dict:
        return {**EDM_SCHEDULER, "sigma_data": SIGMA_DATA}

    def denoiser(self, network, labels=None):
        """The network as the loss sees it: (x, sigma) -> D(x; sigma)."""
        def raw(scaled, c_noise):
            return network(self.memory_format(scaled).to(next(network.parameters()).dtype), c_noise).sample

        return lambda noisy, sigma: self.preconditioning.denoise(raw, noisy, sigma)

    def grid_samplers(self) -> dict:
        """diffusers' EDM Euler and DPM-Solver++ (2M), --grid_num_inference_steps each."""
        steps = self.model_args.grid_num_inference_steps
        return {"edm_euler": ("edm-euler", steps, {}), "edm_dpmsolver": ("edm-dpmsolver", steps, {})}

    def make_pipeline(self, device="cpu"):
        from diffusers import EDMEulerScheduler

        from pipelines import EDMPipeline

        return EDMPipeline(unet=self.averaged_unet(device), scheduler=EDMEulerScheduler(**self.scheduler_config()))

    def model_card(self) -> ModelCardText:
        return ModelCardText(
            description=("An EDM-preconditioned diffusion model (Karras et al. 2022) trained with smallgen's "
                         "`train_unconditional.py`. Load it with `EDMPipeline.from_pretrained` (smallgen installed) "
                         "or `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`; it samples with "
                         "diffusers' EDMEulerScheduler, and EDMDPMSolverMultistepScheduler swaps in."),
            tags=["edm", "karras"], arguments=self.scheduler_config(), trust_remote_code=True,
        )
