"""Networks and the diffusion math.

* ``models.schedulers``: DDPM/DDIM from the papers (no network, no diffusers).
"""
