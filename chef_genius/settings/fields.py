"""How a setting is declared, and what reads the declarations.

``setting(...)`` returns a ``dataclasses.field`` whose metadata holds a ``Spec``: the help text, the
command-line flag(s), the check, how a resume treats the setting (``Policy``) and, for settings the
sampler's order depends on, the key the checkpoint's data position saves it under. Everything else
(the argparse parser, ``validate``, the resume's policy groups, the data position, the doctor's
defaults, the reference pages in docs/reference/) reads these specs; nothing repeats a default or a choice list.
"""

from __future__ import annotations

import argparse
import dataclasses
import weakref
import enum
import types
import typing
from dataclasses import dataclass
from typing import Literal
from collections.abc import Callable

_NONE = type(None)
AS_FIELD = object()  # cli_default: the field's own default


class Policy(enum.Enum):
    """How a resume treats a setting given with another value than the checkpoint's
    (``chef_genius/train/settings.py`` says what each one does)."""

    APPLIED = "applied"  # changes only the rest of the run: applied, one line each
    GUARDED = "guarded"  # changes which recipes the run sees: refused unless --allow-config-change
    ADAPTER = "adapter"  # the shape of a LoRA adapter: refused (alpha allowed with --allow-config-change)
    RECORDED = "recorded"  # the run's history; the weights come from the checkpoint
    SESSION = "session"  # this session's business, never taken from the checkpoint


# What a resume does with a setting of each policy given with another value than the checkpoint's, in the
# words of docs/reference/resume-policy.md (generated from these and the schema).
POLICY_MEANINGS = {
    Policy.APPLIED: "applied from the resumed step on, one log line each",
    Policy.GUARDED: (
        "refused (exit 2) unless `--allow-config-change`, because the rest of the run would no longer "
        "see every recipe once per epoch; with `--allow-config-change` applied with a warning"
    ),
    Policy.ADAPTER: (
        "the shape of a LoRA run's adapter: refused (exit 2); with `--allow-config-change` a new "
        "`--lora-alpha` (a rescaling of the same weights) is applied with a warning, while another "
        "rank or other target modules are still refused: the saved adapter's tensors would not fit"
    ),
    Policy.RECORDED: (
        "kept as the run's history, unused by a resume (the weights come from the checkpoint): a "
        "different flag is ignored with a warning; a LoRA run rebuilds its base from it"
    ),
    Policy.SESSION: "this session's own: never taken from the checkpoint",
}


@dataclass(frozen=True)
class Flag:
    """One command-line spelling of a setting: its names (the first one as --help shows it) and, for a
    flag that takes no value, what it stores (``store_true``, ``store_false``, ``store_const``)."""

    names: tuple[str, ...]
    help: str | None = None  # None: the setting's help
    action: str | None = None  # None: the flag takes a value
    const: object = None


@dataclass(frozen=True)
class Spec:
    help: str
    policy: Policy
    flags: tuple[Flag, ...] | None = None  # None: one flag, --the-field-name (a switch for a bool)
    metavar: str | None = None
    cli_default: object = AS_FIELD  # the parser's default where it differs from the field's
    check: Callable | None = None  # check(value, flag) -> the accepted value, or raises UserError
    position_key: str | None = None  # the key of the checkpoint's data position that also saves it
    note: str | None = None  # what a resume that changes it affects (a log line)
    legacy: object = AS_FIELD  # what a checkpoint that does not record it ran with (AS_FIELD: unknown)


def setting(
    default=dataclasses.MISSING,
    *,
    help: str,
    policy: Policy,
    flags=None,
    metavar=None,
    cli_default=AS_FIELD,
    check=None,
    position_key=None,
    note=None,
    factory=None,
    legacy=AS_FIELD,
):
    """A setting's dataclass field. ``help`` may say ``{default}`` (or ``{default!r}``): the parser
    writes the default there. ``flags``: a flag name, a tuple of aliases, or a list of ``Flag``."""
    if isinstance(flags, str):
        flags = (Flag((flags,)),)
    elif isinstance(flags, tuple) and flags and isinstance(flags[0], str):
        flags = (Flag(flags),)
    elif flags is not None:
        flags = tuple(flags)
    spec = Spec(help, policy, flags, metavar, cli_default, check, position_key, note, legacy)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"spec": spec})
    return dataclasses.field(default=default, metadata={"spec": spec})


# ---------------------------------------------------------------------------------------------
# reading the declarations


def is_setting(f: dataclasses.Field) -> bool:
    return f.metadata.get("spec") is not None


def spec_of(f: dataclasses.Field) -> Spec:
    """The declaration of ``f``, one of ``settings_of``'s fields (KeyError for another field)."""
    return f.metadata["spec"]


def settings_of(cls) -> list[dataclasses.Field]:
    """The declared settings of a dataclass, in field order (internal fields like ``explicit`` left out)."""
    return [f for f in dataclasses.fields(cls) if is_setting(f)]


def own_settings(section) -> list[dataclasses.Field]:
    """The settings a section declares itself, in declaration order."""
    return [f for f in settings_of(section) if f.name in vars(section).get("__annotations__", {})]


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _unwrapped(tp):
    """``X`` for ``X | None`` and ``list[X]``; the type itself otherwise."""
    args = [a for a in typing.get_args(tp) if a is not _NONE]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return _unwrapped(args[0])
    if typing.get_origin(tp) is list:
        return args[0]
    return tp


def is_list(f: dataclasses.Field) -> bool:
    """A setting that takes several values (``list[X]``, also ``list[X] | None``)."""
    args = [a for a in typing.get_args(f.type) if a is not _NONE]
    if typing.get_origin(f.type) in (typing.Union, types.UnionType) and len(args) == 1:
        return typing.get_origin(args[0]) is list
    return typing.get_origin(f.type) is list


def choices_of(f: dataclasses.Field) -> tuple | None:
    """The allowed values of a ``Literal`` setting (also inside ``list[...]`` or ``... | None``)."""
    inner = _unwrapped(f.type)
    return typing.get_args(inner) if typing.get_origin(inner) is Literal else None


def value_type(f: dataclasses.Field):
    """What argparse converts a value to (None: kept a string)."""
    inner = _unwrapped(f.type)
    return inner if inner in (int, float) else None


def flags_of(f: dataclasses.Field) -> tuple[Flag, ...]:
    """The setting's flags: as declared, else ``--the-name`` (a switch for a bool)."""
    spec = spec_of(f)
    if spec.flags is not None:
        return spec.flags
    name = f.name.replace("_", "-")
    if f.type is bool:  # a switch: on with --name when off by default, off with --no-name when on
        return (
            (Flag((f"--{name}",), action="store_true"),)
            if not f.default
            else (Flag((f"--no-{name}",), action="store_false"),)
        )
    return (Flag((f"--{name}",)),)


def flag_name(f: dataclasses.Field) -> str:
    """The setting's flag as --help spells it first."""
    return flags_of(f)[0].names[0]


def position_keys(cls) -> dict[str, str]:
    """field -> the key of the data position that saves it too (older checkpoints kept them only there)."""
    keys = {f.name: spec_of(f).position_key for f in settings_of(cls)}
    return {name: key for name, key in keys.items() if key}


def legacy_values(cls) -> dict[str, object]:
    """field -> the value a checkpoint that does not record it was trained with (declared ``legacy``)."""
    return {f.name: spec_of(f).legacy for f in settings_of(cls) if spec_of(f).legacy is not AS_FIELD}


def by_policy(cls, policy: Policy) -> tuple[str, ...]:
    return tuple(f.name for f in settings_of(cls) if spec_of(f).policy is policy)


# ---------------------------------------------------------------------------------------------
# the parser


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def help_of(f: dataclasses.Field, flag: Flag) -> str:
    text = flag.help if flag.help is not None else spec_of(f).help
    default = default_of(f)
    return text.replace("{default!r}", repr(default)).replace("{default}", _shown(default))


class ListOnce(argparse.Action):
    """A list setting's flag (``nargs="+"``) given once: argparse would keep only the last of two
    (``--data a.csv --data b.csv`` training on b.csv alone), so a second one is refused."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the namespaces this flag was given into (by identity: a Namespace is unhashable)
        self._seen: list[weakref.ref] = []

    def __call__(self, parser, namespace, values, option_string=None):
        self._seen = [ref for ref in self._seen if ref() is not None]
        if any(ref() is namespace for ref in self._seen):
            parser.error(
                f"{option_string} given twice: list every value after one {option_string} (e.g. {option_string} A B)"
            )
        self._seen.append(weakref.ref(namespace))
        setattr(namespace, self.dest, values)


def add_section(parser: argparse.ArgumentParser, title: str, fields: list[dataclasses.Field]) -> None:
    """One argument group: every flag of every field, in declaration order."""
    g = parser.add_argument_group(title)
    for f in fields:
        spec = spec_of(f)
        for i, flag in enumerate(flags_of(f)):
            kwargs: dict[str, object] = {"dest": f.name, "help": help_of(f, flag)}
            if flag.action is not None:
                kwargs["action"] = flag.action
                if flag.action == "store_const":
                    kwargs["const"] = flag.const
            else:
                kwargs.update(type=value_type(f), choices=choices_of(f), metavar=spec.metavar)
                if is_list(f):
                    kwargs.update(nargs="+", action=ListOnce)
            if i == 0:  # argparse takes a field's default from its first flag
                default = default_of(f) if spec.cli_default is AS_FIELD else spec.cli_default
                kwargs["default"] = list(default) if isinstance(default, list) else default
            given = {k: v for k, v in kwargs.items() if v is not None or k == "default"}
            g.add_argument(*flag.names, **given)  # type: ignore[arg-type]  # each value the type its keyword takes


def run_checks(config) -> None:
    """Each setting's own check, in field order; a check may also normalise the value."""
    for f in settings_of(type(config)):
        check = spec_of(f).check
        value = getattr(config, f.name)
        if check is not None and value is not None:
            setattr(config, f.name, check(value, flags_of(f)[0].names[0]))
