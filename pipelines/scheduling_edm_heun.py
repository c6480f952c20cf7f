"""Karras et al.'s deterministic Heun sampler as a diffusers scheduler (diffusers has no EDM Heun).

Self-contained (torch and diffusers only): a pipeline holding it saves this file into its
``scheduler/`` folder, where diffusers' loader finds it (``trust_remote_code=True``).
"""

from __future__ import annotations

import torch
from diffusers import EDMEulerScheduler, SchedulerMixin  # noqa: F401 (diffusers' loader looks up a

# component's base class by name in the module that defines it)
from diffusers.schedulers.scheduling_edm_euler import EDMEulerSchedulerOutput


class EDMHeunScheduler(EDMEulerScheduler):
    """Karras et al.'s deterministic sampler (their Algorithm 1, S_churn = 0): Heun's second-order
    method between the noise levels, Euler for a last step to sigma = 0 (diffusers has no EDM Heun).

    ``set_timesteps(N)`` takes EDMEulerScheduler's N Karras levels; ``timesteps`` then holds one
    entry per network evaluation (2N - 1 with a final level 0: the paper's 18 steps are 35 NFE), and
    every ``step`` is either a level's Euler predictor or the corrector that follows it. Loads from
    the same config as EDMEulerScheduler (``EDMHeunScheduler.from_config(pipe.scheduler.config)``).
    """

    order = 2

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None):
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas)
        # evaluation k: (level index i, corrector?); a corrector at level i + 1 follows level i's
        # predictor unless level i + 1 is 0, where the derivative is undefined (the paper's rule)
        self.evaluations = []
        for i in range(len(self.sigmas) - 1):
            self.evaluations.append((i, False))
            if self.sigmas[i + 1] > 0:
                self.evaluations.append((i, True))
        levels = torch.stack([self.sigmas[i + corrector] for i, corrector in self.evaluations])
        self.timesteps = self.precondition_noise(levels).to(device)
        self._predictor = None  # (x_i, d_i) while a corrector is due

    def _init_step_index(self, timestep) -> None:
        # timesteps repeat, so a position cannot be found from a value: start where set_begin_index says
        self._step_index = self._begin_index or 0

    def _evaluation_sigma(self):
        level, corrector = self.evaluations[self.step_index]
        return self.sigmas[level + corrector]

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        if self.step_index is None:
            self._init_step_index(timestep)
        self.is_scale_input_called = True
        return self.precondition_inputs(sample, self._evaluation_sigma())

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True, **kwargs):
        """One evaluation: the predictor x_i + (s_i+1 - s_i) d_i, or the corrector that averages the
        derivatives at both ends; ``sample`` is what the network was given (unscaled)."""
        if self.step_index is None:
            self._init_step_index(timestep)
        level, corrector = self.evaluations[self.step_index]
        sigma = self._evaluation_sigma()
        sample = sample.to(torch.float32)
        denoised = self.precondition_outputs(sample, model_output, sigma)
        derivative = (sample - denoised) / sigma
        if corrector:
            start, start_derivative = self._predictor
            previous = start + (sigma - self.sigmas[level]) * (start_derivative + derivative) / 2
            self._predictor = None
        else:
            previous = sample + (self.sigmas[level + 1] - sigma) * derivative
            self._predictor = (sample, derivative) if self.sigmas[level + 1] > 0 else None
        self._step_index += 1
        previous = previous.to(model_output.dtype)
        if not return_dict:
            return previous, denoised
        return EDMEulerSchedulerOutput(prev_sample=previous, pred_original_sample=denoised)
