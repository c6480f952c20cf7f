"""DiffusionPipeline classes beyond diffusers' own (unconditional DDPM models export DDPMPipeline).

* ``EDMPipeline``: an EDM-preconditioned UNet with diffusers' EDM schedulers, ``EDMHeunScheduler`` or
  ``EDMUniPCScheduler``.
* ``ConsistencyPipeline``: a consistency model in 1-4 steps with diffusers' CMStochasticIterativeScheduler.
* ``FlowMatchPipeline``: a flow-matching UNet with diffusers' flow-matching schedulers.
* ``MeanFlowPipeline``: a MeanFlow UNet sampling in one call (or a few) with diffusers' flow-matching Euler steps.
* ``ClassConditionalPipeline``: a class-conditional UNet with classifier-free guidance.
* ``VAEPipeline``: prior samples through a ConvVAE's decoder.
* ``GANPipeline``: latents through a DCGAN generator or a VAE-GAN decoder.

Each is a ``PortablePipeline``: saved with its code, loaded by diffusers' own loader.
"""

from pipelines.pipeline_baselines import GANPipeline, VAEPipeline
from pipelines.pipeline_conditional import ClassConditionalPipeline
from pipelines.pipeline_consistency import ConsistencyPipeline
from pipelines.pipeline_edm import EDMPipeline
from pipelines.pipeline_flow import FlowMatchPipeline
from pipelines.pipeline_meanflow import MeanFlowPipeline
from pipelines.portable_pipeline import PortablePipeline
from pipelines.scheduling_edm_heun import EDMHeunScheduler
from pipelines.scheduling_edm_unipc import EDMUniPCScheduler

__all__ = ["ClassConditionalPipeline", "ConsistencyPipeline", "EDMHeunScheduler", "EDMPipeline", "EDMUniPCScheduler", "FlowMatchPipeline", "GANPipeline",
           "MeanFlowPipeline", "PortablePipeline", "VAEPipeline"]
