"""``--model_type edm``: a diffusers UNet2DModel trained with the EDM formulation (Karras et al.
2022: preconditioning, log-normal noise levels, their loss weighting), exported as an EDMPipeline
with diffusers' EDMEulerScheduler. The math is in ``models/edm.py``; everything else (EMA,
checkpoints, exact resume, grids) is the ddpm objective's.
"""

from __future__ import annotations

import torch

from smallgen.errors import ConfigError
from smallgen.objectives.base import MicroBatch, ModelCardText
from smallgen.objectives.diffusion import DiffusionObjective

# diffusers' EDM scheduler settings: the paper's noise range and Karras sigma spacing.
EDM_SCHEDULER = dict(sigma_min=0.002, sigma_max=80.0, rho=7.0, prediction_type="epsilon", sigma_schedule="karras")


class EDMObjective(DiffusionObjective):
    name = "edm"

    def __init__(self, data_args, model_args, train_args):
        super().__init__(data_args, model_args, train_args)
        from models.edm import SIGMA_DATA, EDMLoss, EDMPreconditioning

        self.preconditioning = EDMPreconditioning(SIGMA_DATA)
        self.loss = EDMLoss(p_mean=model_args.edm_p_mean, p_std=model_args.edm_p_std, sigma_data=SIGMA_DATA)

    def check_arguments(self) -> None:
        super().check_arguments()
        m = self.model_args
        if m.snr_gamma is not None:
            raise ConfigError("--snr_gamma applies to ddpm: edm weights its loss by the noise level itself")
        if m.prediction_type != "epsilon":
            raise ConfigError("--prediction_type applies to ddpm: edm's network output is fixed by its preconditioning")

    def scheduler_config(self) -> dict:
        from models.edm import SIGMA_DATA

        return {**EDM_SCHEDULER, "sigma_data": SIGMA_DATA}

    def denoiser(self, network, batch: MicroBatch | None = None, training: bool = True):
        """The network as the loss sees it: (x, sigma) -> D(x; sigma)."""
        channels_last = self.train_args.channels_last

        def raw(scaled, c_noise):
            if channels_last:
                scaled = scaled.contiguous(memory_format=torch.channels_last)
            return network(scaled.to(next(network.parameters()).dtype), c_noise).sample

        return lambda noisy, sigma: self.preconditioning.denoise(raw, noisy, sigma)

    def samplers(self) -> dict:
        """{name: scheduler} for the sample grids: diffusers' EDM Euler and DPM-Solver++ (2M)."""
        from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

        config = self.scheduler_config()
        return {"edm_euler": EDMEulerScheduler(**config), "edm_dpmsolver": EDMDPMSolverMultistepScheduler(**config)}

    @torch.no_grad()
    def sample_grids(self, num_images: int, seed: int) -> dict[str, torch.Tensor]:
        from smallgen.sampling import sample_images

        model = self.averaged_unet()
        steps = self.model_args.ddim_num_inference_steps
        return {name: sample_images(model, scheduler, num_images, steps, seed=seed,
                                    batch_size=self.train_args.eval_batch_size)
                for name, scheduler in self.samplers().items()}

    def export(self, output_dir: str) -> ModelCardText:
        from diffusers import EDMEulerScheduler

        from pipelines.pipeline_edm import EDMPipeline
        from smallgen.export import save_custom_pipeline

        config = self.scheduler_config()
        pipeline = EDMPipeline(unet=self.averaged_unet().to("cpu"), scheduler=EDMEulerScheduler(**config))
        save_custom_pipeline(pipeline, "pipeline_edm", output_dir)
        return ModelCardText(
            description=("An EDM-preconditioned diffusion model (Karras et al. 2022) trained with smallgen's "
                         "`train_unconditional.py`. Load it with `EDMPipeline.from_pretrained` (smallgen installed) "
                         "or `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`; it samples with "
                         "diffusers' EDMEulerScheduler, and EDMDPMSolverMultistepScheduler swaps in."),
            tags=["edm", "karras"], arguments=config, trust_remote_code=True,
        )
