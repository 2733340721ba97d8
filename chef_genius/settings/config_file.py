"""Run configuration files: ``--config FILE.yaml`` read into settings, and a run's settings written back.

A config file is a YAML mapping of setting names (the schema's field names, ``batch_size``, or their
flag spelling, ``batch-size``) to values. Each value is read as its flag would read it and checked
by the setting's own check; anything wrong is refused with one line naming the file and the key
(``UserError``, exit 2). The command line overrides the file, and the settings a file gives count as
given by the user, exactly like flags (``train/config.py``; a resume's rules in ``train/settings.py``).

YAML is read with YAML 1.2's booleans (only ``true`` / ``false``), so ``mixed_precision: no`` is the
choice ``"no"``, not ``False``; numbers such as ``1e-4`` are accepted as their flag accepts them.

``settings_yaml`` writes every setting of a run (``RUN/settings.yaml``) so that
``--config RUN/settings.yaml`` gives the same settings again.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Literal

import yaml

from chef_genius.errors import UserError
from chef_genius.settings.fields import choices_of, flag_name, settings_of, spec_of

# What one command does, not what the run is: never read from (config) or written to (the rest) a
# run's settings file, so that the file can start a new run or, with --resume, continue this one.
NOT_WRITTEN = ("config", "resume_from_checkpoint", "auto_resume", "allow_config_change", "plan_only")
SETTINGS_FILE = "settings.yaml"  # in the run folder


class _Loader(yaml.SafeLoader):
    """The safe loader with YAML 1.2's booleans: ``yes`` / ``no`` / ``on`` / ``off`` stay strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _mapping(path: Path) -> list[tuple[object, object]]:
    """The file's top-level (key, value) pairs in order, duplicates kept (so they can be refused)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--config {path} cannot be read: {err}") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if node is None:
        return []
    if not isinstance(node, yaml.MappingNode):
        raise UserError(f"{path}: a config file is a mapping of setting names to values (name: value, one a line)")
    loader = _Loader("")
    try:
        return [(loader.construct_object(k, deep=True), loader.construct_object(v, deep=True)) for k, v in node.value]
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {getattr(err, 'problem', None) or err}") from None


def read_config(path: str | Path, config_class, skip=frozenset()) -> dict:
    """field name -> value of the settings the file gives, read and checked as their flags would be.
    ``skip``: the fields the command line sets, which override the file (their values are not checked)."""
    path = Path(path)
    fields = {f.name: f for f in settings_of(config_class)}
    values = {}
    for key, value in _mapping(path):
        name = str(key).replace("-", "_")
        if not isinstance(key, str) or name not in fields or name == "config":
            raise UserError(f"{path}: {key}: {_unknown(key, fields)}")
        if name in values:
            raise UserError(f"{path}: {key}: {name} is given twice")
        f = fields[name]
        try:
            value = _converted(value, f)
            check = spec_of(f).check
            if check is not None and value is not None and name not in skip:
                value = check(value, flag_name(f))
        except UserError as err:
            raise UserError(f"{path}: {key}: {err}", err.exit_code) from None
        values[name] = value
    return values


def _unknown(key, fields) -> str:
    if key == "config" or key == "--config":
        return "a config file cannot name another (give one --config)"
    close = difflib.get_close_matches(str(key).replace("-", "_"), [n for n in fields if n != "config"], n=1)
    return "not a setting" + (f"; did you mean {close[0]}?" if close else " (see --help: a flag's name without --)")


# ---------------------------------------------------------------------------------------------
# a value as its flag reads it

_NONE = type(None)


def _converted(value, f: dataclasses.Field):
    tp = f.type
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and _NONE in args:
        if value is None:
            return None
        tp = next(a for a in args if a is not _NONE)
    if typing.get_origin(tp) is list:
        items = value if isinstance(value, list) else [value]  # one value for a list: a list of one
        return [_scalar(item, typing.get_args(tp)[0], f) for item in items]
    return _scalar(value, tp, f)


def _scalar(value, tp, f: dataclasses.Field):
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UserError(f"must be {'an integer' if tp is int else 'a number'}, got {value!r}")
        if tp is float and isinstance(value, int):
            return float(value)
        try:
            converted = tp(value) if isinstance(value, str) else value
        except ValueError:
            converted = None
        if type(converted) is not tp:
            raise UserError(f"must be {'an integer' if tp is int else 'a number'}, got {value!r}")
        return converted
    if not isinstance(value, str):
        raise UserError(f"must be a string (put it in quotes), got {value!r}")
    choices = choices_of(f)  # tp's values when tp is the field's Literal (or its list's)
    if typing.get_origin(tp) is Literal and choices is not None and value not in choices:
        raise UserError(f"must be one of {', '.join(choices)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# a run's settings, written back


def settings_yaml(config, sections) -> str:
    """Every setting of ``config`` (but ``NOT_WRITTEN``) as a config file, one block per section."""
    lines = [
        "# The settings this run trains with, as its latest session resolved them (rewritten by each",
        "# session). Reuse them: --config THIS_FILE starts a new run with the same settings (give",
        "# --model-output NEW_FOLDER), and --config THIS_FILE --resume-from-checkpoint latest continues",
        "# this one. Flags on the command line override the file. Not written: what one command does",
        f"# ({', '.join(NOT_WRITTEN)}).",
    ]
    for section in sections:
        names = [
            f.name
            for f in settings_of(section)
            if f.name in vars(section).get("__annotations__", {}) and f.name not in NOT_WRITTEN
        ]
        if not names:
            continue
        block = {name: getattr(config, name) for name in names}
        lines += [
            "",
            f"# {section.title}",
            yaml.safe_dump(block, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000).rstrip(
                "\n"
            ),
        ]
    return "\n".join(lines) + "\n"
