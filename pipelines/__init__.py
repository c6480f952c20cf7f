"""DiffusionPipeline classes for the baselines (the diffusion models export diffusers' DDPMPipeline).

* ``VAEPipeline``: prior samples through a ConvVAE's decoder.
* ``GANPipeline``: latents through a DCGAN generator or a VAE-GAN decoder.
"""

from pipelines.pipeline_baselines import GANPipeline, VAEPipeline

__all__ = ["GANPipeline", "VAEPipeline"]
