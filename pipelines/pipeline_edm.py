"""Unconditional sampling of an EDM-preconditioned UNet (Karras et al. 2022).

Self-contained (torch and diffusers only): this file is copied into exported folders, so
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works without smallgen.
The UNet is diffusers' own UNet2DModel, trained as F in D(x; sigma) = c_skip x + c_out F(c_in x,
ln(sigma) / 4); the scheduler is diffusers' EDMEulerScheduler (or EDMDPMSolverMultistepScheduler,
or ``EDMHeunScheduler`` below), which applies c_in through ``scale_model_input`` and c_skip, c_out
in ``step``. DDPMPipeline cannot sample it: it never scales the model input.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, EDMEulerScheduler, ImagePipelineOutput
from diffusers.schedulers.scheduling_edm_euler import EDMEulerSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


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


class EDMPipeline(DiffusionPipeline):
    """``pipe(batch_size=16, num_inference_steps=18, generator=...)``; any EDM scheduler swaps in."""

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """This class, installed, loads a folder (or Hub id) it exported without trust_remote_code."""
        if cls is not EDMPipeline:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        import json
        import os

        import diffusers

        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            from huggingface_hub import snapshot_download

            folder = snapshot_download(folder, revision=kwargs.get("revision"), token=kwargs.get("token"),
                                       cache_dir=kwargs.get("cache_dir"))
        with open(os.path.join(folder, "model_index.json")) as handle:
            index = json.load(handle)
        unet = diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet")
        scheduler = getattr(diffusers, index["scheduler"][1]).from_pretrained(folder, subfolder="scheduler")
        return cls(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator=None, num_inference_steps: int = 18,
                 output_type: str = "pil", return_dict: bool = True, **kwargs):
        """``batch_size`` images; ``output_type`` "pil", "np" (floats in [0, 1]) or "pt"."""
        config = self.unet.config
        sample = randn_tensor((batch_size, config.in_channels, config.sample_size, config.sample_size),
                              generator=generator, device=self.device, dtype=torch.float32)
        self.scheduler.set_timesteps(num_inference_steps)
        sample = sample * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(sample, t).to(self.unet.dtype)
            prediction = self.unet(model_input, t.to(self.device)).sample.float()
            sample = self.scheduler.step(prediction, t, sample).prev_sample
        images = (sample / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            result = images
        else:
            result = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                result = self.numpy_to_pil(result)
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)
