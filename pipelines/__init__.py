"""DiffusionPipeline classes beyond diffusers' own (unconditional diffusion models export DDPMPipeline).

* ``VAEPipeline``: prior samples through a ConvVAE's decoder.
* ``GANPipeline``: latents through a DCGAN generator or a VAE-GAN decoder.
* ``ClassConditionalPipeline``: a class-conditional UNet with classifier-free guidance.
* ``EDMPipeline``: an EDM-preconditioned UNet with diffusers' EDM schedulers (or ``EDMHeunScheduler``).
"""

from pipelines.pipeline_baselines import GANPipeline, VAEPipeline
from pipelines.pipeline_conditional import ClassConditionalPipeline
from pipelines.pipeline_edm import EDMHeunScheduler, EDMPipeline

__all__ = ["ClassConditionalPipeline", "EDMHeunScheduler", "EDMPipeline", "GANPipeline", "VAEPipeline"]
