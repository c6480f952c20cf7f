"""Model types: each is an Objective (``base.py``) in its own module; the loop never looks inside.

Adding a model type: write ``smallgen/objectives/<name>.py`` with an ``Objective`` subclass and add
one line below. Entries are "module:Class" so that reading the list imports nothing heavy.
"""

from __future__ import annotations

from importlib import import_module

OBJECTIVES = {
    "ddpm": "smallgen.objectives.diffusion:DiffusionObjective",
    "vae": "smallgen.objectives.baselines:VAEObjective",
    "dcgan": "smallgen.objectives.baselines:DCGANObjective",
    "vaegan": "smallgen.objectives.baselines:VAEGANObjective",
}
MODEL_TYPES = tuple(OBJECTIVES)


def objective_class(model_type: str):
    module, name = OBJECTIVES[model_type].split(":")
    return getattr(import_module(module), name)
