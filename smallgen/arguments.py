"""How a flag is declared, checked and parsed: the one way, for every script.

Every argument class (``smallgen/config.py``'s data and training flags, each model type's own in its
``smallgen/objectives`` module, ``evaluate_fid.py``'s and the report's) is a dataclass whose fields
are declared with ``flag``: the default, the help text, the ``--help`` group, and what is allowed
(``choices``, a range with ``at_least``/``above``/``below``). Its ``__post_init__`` calls
``check_flags``, which refuses a value outside them with a ConfigError naming the flag, and never
changes a value. ``build_parser`` turns the classes into one argparse parser grouped for ``--help``.
A renamed flag lists its old names (``old_names``): they still work for a release, with a FutureWarning
naming the new one, on the command line (``build_parser``) and in recipes (``renamed_keys``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import warnings
from dataclasses import field

from smallgen.errors import ConfigError

RANGE_KEYS = ("at_least", "above", "below")
OUR_KEYS = ("group", "old_names", *RANGE_KEYS)  # metadata argparse does not take


def flag(default, help: str, *, group: str, choices=None, at_least=None, above=None, below=None, nargs=None,
         old_names: tuple[str, ...] = ()):
    """A dataclass field: its default (a list is copied for each instance), help text, ``--help`` group,
    choices and range. A default of None makes the flag optional ('none' on the command line clears it).
    ``old_names``: the names it had before a rename, accepted with a warning for a release."""
    metadata = {"help": help, "group": group, "at_least": at_least, "above": above, "below": below,
                "old_names": tuple(old_names)}
    if choices is not None:
        metadata["choices"] = list(choices)
    if nargs is not None:
        metadata["nargs"] = nargs
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _allowed(metadata: dict) -> str:
    words = {"at_least": "at least", "above": "above", "below": "below"}
    return " and ".join(f"{words[k]} {metadata[k]}" for k in RANGE_KEYS if metadata.get(k) is not None)


def check_flags(arguments) -> None:
    """ConfigError naming the flag for any value outside its choices or range (None: unset, allowed)."""
    for item in dataclasses.fields(arguments):
        meta, value = item.metadata, getattr(arguments, item.name)
        for one in value if isinstance(value, list) else [value]:
            if one is None:
                continue
            if meta.get("choices") is not None and one not in meta["choices"]:
                raise ConfigError(f"--{item.name} must be one of {', '.join(map(str, meta['choices']))}; got {one!r}")
            low, above, below = meta.get("at_least"), meta.get("above"), meta.get("below")
            if ((low is not None and not one >= low) or (above is not None and not one > above)
                    or (below is not None and not one < below)):
                raise ConfigError(f"--{item.name} must be {_allowed(meta)}; got {one!r}")


def non_default_fields(part: type, arguments) -> list[str]:
    """The fields of argument class ``part`` whose value in ``arguments`` is not the default."""
    def default(item):
        return item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default

    return [item.name for item in dataclasses.fields(part) if getattr(arguments, item.name) != default(item)]


def renamed_flags(classes) -> dict[str, str]:
    """{old name: current name} of every renamed flag of ``classes``."""
    return {old: item.name for cls in classes for item in dataclasses.fields(cls)
            for old in item.metadata.get("old_names", ())}


def warn_renamed(old: str, new: str) -> None:
    warnings.warn(f"--{old} was renamed --{new}; the old name will stop working in a future release",
                  FutureWarning, stacklevel=3)


def renamed_keys(values: dict, classes, where: str) -> dict:
    """A recipe's keys with old flag names replaced by the current ones (warned); both given: ConfigError."""
    values = dict(values)
    for old, new in renamed_flags(classes).items():
        if old in values:
            if new in values:
                raise ConfigError(f"{where} sets both {old} and {new} (its new name): keep {new}")
            warn_renamed(old, new)
            values[new] = values.pop(old)
    return values


class _RenamedFlag(argparse.Action):
    """An old name of a flag: stores into the current one, with a warning naming it."""

    def __call__(self, parser, namespace, values, option_string=None):
        warn_renamed(option_string.lstrip("-"), self.dest)
        setattr(namespace, self.dest, values)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults once per flag ('unset' for None), never after a help text that explains its own."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or "unset" in text.lower() or action.default in (argparse.SUPPRESS,):
            return text
        if action.default is None:
            return f"{text} (default: unset)" if action.option_strings else text
        return super()._get_help_string(action)


def none_or(convert):
    """An optional flag's type: 'none' clears it (a recipe's value too), anything else is converted."""
    def parse(value: str):
        return None if value.lower() == "none" else convert(value)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names it in errors
    return parse


def _parser_class():
    """transformers' HfArgumentParser, passing argparse every field metadata key but ours."""
    from transformers import HfArgumentParser

    class ArgumentParser(HfArgumentParser):
        @staticmethod
        def _parse_dataclass_field(parser, item):
            item = copy.copy(item)
            item.metadata = {k: v for k, v in item.metadata.items() if k not in OUR_KEYS}
            HfArgumentParser._parse_dataclass_field(parser, item)

    return ArgumentParser


def build_parser(classes, description: str, groups: list[str], usage: str | None = None):
    """One parser for ``classes``, its flags in ``groups`` (in that order) for --help."""
    parser = _parser_class()(classes, description=description, formatter_class=HelpFormatter, usage=usage)
    general = parser._optionals  # argparse keeps groups in private lists; moving actions only changes --help
    fields = {f.name: f for cls in classes for f in dataclasses.fields(cls)}
    optional = {name for name, f in fields.items() if f.default is None}
    group_of = {name: f.metadata["group"] for name, f in fields.items()}
    group_of.update({f"no_{name}": group for name, group in group_of.items()})  # --no_ema_warmup
    for title in groups:
        group = parser.add_argument_group(title)
        for action in [a for a in general._group_actions if group_of.get(a.dest) == title]:
            general._group_actions.remove(action)
            group._group_actions.append(action)
            if action.dest in optional and action.type is not None:
                action.type = none_or(action.type)
    for old, new in renamed_flags(classes).items():  # hidden from --help: the new name is the one to learn
        group = next(g for g in parser._action_groups if any(a.dest == new for a in g._group_actions))
        current = next(a for a in group._group_actions if a.dest == new)
        group.add_argument(f"--{old}", dest=new, action=_RenamedFlag, type=current.type, nargs=current.nargs,
                           choices=current.choices, help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    return parser


def parse_into(parser, argv):
    """The parser's dataclasses from ``argv``; ConfigError for anything argparse or a check refuses."""
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as exc:  # a dataclass check outside ConfigError (e.g. a bad type in the YAML)
        raise ConfigError(str(exc)) from exc
    if remaining:
        raise ConfigError(f"unknown argument(s): {' '.join(remaining)} (see --help)")
    return parsed
