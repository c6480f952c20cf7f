"""How a flag is declared: a dataclass field with its help text, its ``--help`` group and its choices.

Every argument class (``smallgen/config.py``'s data and training flags, and each model type's own
in its ``smallgen/objectives`` module) declares its fields with ``flag``; ``check_choices`` then
refuses a value outside a field's choices, so no choice list is written twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field

from smallgen.errors import ConfigError


def flag(default, help: str, *, group: str, choices=None):
    """A dataclass field: its default, its help text and its group in ``--help``."""
    metadata = {"help": help, "group": group}
    if choices is not None:
        metadata["choices"] = list(choices)
    return field(default=default, metadata=metadata)


def check_choices(arguments) -> None:
    """ConfigError naming the flag and its choices for any value outside them."""
    for item in dataclasses.fields(arguments):
        choices = item.metadata.get("choices")
        value = getattr(arguments, item.name)
        if choices is not None and value not in choices:
            raise ConfigError(f"--{item.name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def non_default_fields(part: type, arguments) -> list[str]:
    """The fields of argument class ``part`` whose value in ``arguments`` is not the default."""
    return [item.name for item in dataclasses.fields(part) if getattr(arguments, item.name) != item.default]
