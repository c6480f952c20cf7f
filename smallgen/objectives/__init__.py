"""The registry of model types: each is an Objective (``base.py``) in its own module, which owns
everything about it (its flags, networks, loss, pipeline, samplers and grids). The training loop,
``config.py``, ``evaluation.py`` and ``export.py`` read what they need from here and name no model
type.

Adding a model type: write ``smallgen/objectives/<name>.py`` with an ``Objective`` subclass and add
one line below ("module:Class"; a key "<type>+class" is the variant that ``--class_conditional``
chooses).
"""

from __future__ import annotations

from functools import cache
from importlib import import_module

from smallgen.arguments import non_default_fields
from smallgen.errors import ConfigError, UserError

OBJECTIVES = {
    "ddpm": "smallgen.objectives.diffusion:DiffusionObjective",
    "ddpm+class": "smallgen.objectives.conditional:ClassConditionalObjective",  # --class_conditional
    "edm": "smallgen.objectives.edm:EDMObjective",
    "flow": "smallgen.objectives.flow:FlowObjective",
    "consistency": "smallgen.objectives.consistency:ConsistencyObjective",
    "meanflow": "smallgen.objectives.meanflow:MeanFlowObjective",
    "vae": "smallgen.objectives.baselines:VAEObjective",
    "dcgan": "smallgen.objectives.baselines:DCGANObjective",
    "vaegan": "smallgen.objectives.baselines:VAEGANObjective",
}
MODEL_TYPES = tuple(k for k in OBJECTIVES if "+" not in k)  # "+class": a variant chosen by a flag


def objective_key(model_type: str, class_conditional: bool = False) -> str:
    return f"{model_type}+class" if class_conditional else model_type


def _load(key: str):
    module, name = OBJECTIVES[key].split(":")
    return getattr(import_module(module), name)


def objective_class(model_type: str, class_conditional: bool = False):
    """The Objective subclass of a --model_type (and --class_conditional)."""
    key = objective_key(model_type, class_conditional)
    if key not in OBJECTIVES:
        takers = [k.split("+")[0] for k in OBJECTIVES if k.endswith("+class")]
        raise ConfigError(f"--class_conditional applies to --model_type {' or '.join(takers)}")
    return _load(key)


@cache
def objective_classes() -> dict:
    """{registry key: Objective subclass}, every model type imported."""
    return {key: _load(key) for key in OBJECTIVES}


def _declared(attribute: str) -> tuple[type, ...]:
    """The argument classes every model type lists in ``attribute``, each once, in registry order."""
    parts: list[type] = []
    for cls in objective_classes().values():
        parts += [part for part in getattr(cls, attribute) if part not in parts]
    return tuple(parts)


@cache
def argument_parts() -> tuple[type, ...]:
    """Every model type's train_unconditional.py argument classes."""
    return _declared("arguments")


def _flag_for(key: str) -> str:
    model_type, _, variant = key.partition("+")
    return model_type + (" --class_conditional" if variant else "")


def _takers(part: type) -> str:
    """The model types that read an argument class, e.g. "ddpm, edm" (a variant only if its type does not)."""
    keys = [key for key, cls in objective_classes().items() if part in cls.arguments]
    return ", ".join(_flag_for(k) for k in keys if k.split("+")[0] == k or k.split("+")[0] not in keys)


def check_model_arguments(arguments) -> None:
    """Each model type's own checks on its flags; a flag of another model type left at its default."""
    cls = objective_class(arguments.model_type, arguments.class_conditional)
    for part in argument_parts():
        if part in cls.arguments:
            if hasattr(part, "check"):  # checks across flags; ranges and choices are the flags' own
                part.check(arguments, cls)
            continue
        changed = non_default_fields(part, arguments)
        if changed:
            raise ConfigError(f"--{changed[0]} applies to --model_type {_takers(part)}, not {_flag_for(cls.name)}")


@cache
def evaluation_parts() -> tuple[type, ...]:
    """Every model type's evaluate_fid.py argument classes."""
    return _declared("evaluation_arguments")


def check_evaluation_arguments(objective, pipeline_class: str, arguments) -> None:
    """UserError for an evaluate_fid.py flag of another model type's pipelines that is not at its default."""
    for part in evaluation_parts():
        changed = non_default_fields(part, arguments)
        if changed and (objective is None or part not in objective.evaluation_arguments):
            takers = [c for key, cls in objective_classes().items() if part in cls.evaluation_arguments
                      for c in cls.pipeline_classes]
            raise UserError(f"--{changed[0]} applies to {', '.join(dict.fromkeys(takers))}, not {pipeline_class}")


def sampler_names() -> tuple[str, ...]:
    """Every sampler evaluate_fid.py offers (--scheduler), in registry order."""
    names: list[str] = []
    for cls in objective_classes().values():
        names += [name for name in cls.samplers if name not in names]
    return tuple(names)


def objective_for_pipeline(pipeline_class_name: str):
    """The model type whose exported pipeline class has this name (None: not one of ours)."""
    for cls in objective_classes().values():
        if pipeline_class_name in cls.pipeline_classes:
            return cls
    return None
