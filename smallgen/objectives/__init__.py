"""Model types: each is an Objective (``base.py``) in its own module; the loop never looks inside.

Adding a model type: write ``smallgen/objectives/<name>.py`` with an ``Objective`` subclass and add
one line below. Entries are "module:Class" so that reading the list imports nothing heavy.
"""

from __future__ import annotations

from importlib import import_module

OBJECTIVES = {
    "ddpm": "smallgen.objectives.diffusion:DiffusionObjective",
    "ddpm+class": "smallgen.objectives.conditional:ClassConditionalObjective",  # --class_conditional
    "edm": "smallgen.objectives.edm:EDMObjective",
    "vae": "smallgen.objectives.baselines:VAEObjective",
    "dcgan": "smallgen.objectives.baselines:DCGANObjective",
    "vaegan": "smallgen.objectives.baselines:VAEGANObjective",
}
MODEL_TYPES = tuple(k for k in OBJECTIVES if "+" not in k)  # "+class": a variant chosen by a flag


def objective_class(model_type: str, class_conditional: bool = False):
    module, name = OBJECTIVES[f"{model_type}+class" if class_conditional else model_type].split(":")
    return getattr(import_module(module), name)
