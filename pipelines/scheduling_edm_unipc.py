"""diffusers' UniPC (Zhao et al. 2023) for an EDM-preconditioned network (diffusers has no EDM UniPC).

Self-contained (torch and diffusers only): a pipeline holding it saves this file into its
``scheduler/`` folder, where diffusers' loader finds it (``trust_remote_code=True``).
"""

from __future__ import annotations

import math

import torch
from diffusers import SchedulerMixin, UniPCMultistepScheduler  # noqa: F401 (diffusers' loader looks up a
from diffusers.configuration_utils import register_to_config  # component's base class by name here)


class EDMUniPCScheduler(UniPCMultistepScheduler):
    """UniPC in data-prediction form over Karras et al.'s levels, driving EDMPipeline's loop.

    diffusers' UniPCMultistepScheduler with Karras sigmas between ``sigma_min`` and ``sigma_max``
    already integrates the probability-flow ODE of x = data + sigma n, in its variance-preserving
    coordinates x / sqrt(1 + sigma^2), with lambda = -ln sigma. This class only speaks EDM at its
    edges: ``timesteps`` are EDM's c_noise = ln(sigma) / 4, ``scale_model_input`` turns the state into
    EDM's c_in x, and ``step`` turns the network's F into the denoised D = c_skip x + c_out F that UniPC
    takes as its x_0 prediction. Loads from an EDM pipeline's scheduler config
    (``EDMUniPCScheduler.from_config(pipe.scheduler.config)``); ``solver_order`` 1 with every corrector
    disabled is DPM-Solver++(1), i.e. DDIM, which a test checks against diffusers' EDM DPM-Solver.
    """

    @register_to_config
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
                 solver_order: int = 2, solver_type: str = "bh2", lower_order_final: bool = True,
                 disable_corrector: list[int] | None = None, prediction_type: str = "sample",
                 final_sigmas_type: str = "zero"):
        # An EDM config's prediction_type ("epsilon": F) and final level are taken and overridden here:
        # ``step`` hands UniPC the denoised image, and the last level is 0.
        super().__init__(solver_order=solver_order, prediction_type="sample", solver_type=solver_type,
                         lower_order_final=lower_order_final, disable_corrector=list(disable_corrector or []),
                         use_karras_sigmas=True, final_sigmas_type="zero", sigma_min=sigma_min, sigma_max=sigma_max)
        self.sigma_data = sigma_data
        self.init_noise_sigma = sigma_max / math.sqrt(1 + sigma_max ** 2)  # pure noise, in UniPC's coordinates

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, **kwargs):
        super().set_timesteps(num_inference_steps, device=device, **kwargs)
        self.timesteps = (self.sigmas[:-1].log() / 4).to(device=device, dtype=torch.float32)  # EDM's c_noise

    def _level(self, timestep) -> torch.Tensor:
        if self.step_index is None:
            self._init_step_index(timestep)
        return self.sigmas[self.step_index].to(torch.float32)

    def scale_model_input(self, sample: torch.Tensor, timestep=None, *args, **kwargs) -> torch.Tensor:
        sigma = self._level(timestep)
        return sample * ((1 + sigma ** 2) / (sigma ** 2 + self.sigma_data ** 2)).sqrt()

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """UniPC's step with the denoised image D(x; sigma) as its x_0 prediction."""
        sigma, sd = self._level(timestep), self.sigma_data
        state = sample.to(torch.float32) * (1 + sigma ** 2).sqrt()  # x = data + sigma n
        denoised = sd ** 2 / (sigma ** 2 + sd ** 2) * state + sigma * sd / (sigma ** 2 + sd ** 2).sqrt() * model_output
        return super().step(denoised, timestep, sample, return_dict=return_dict)
