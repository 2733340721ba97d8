"""Where a resume decides what it may change: the run's settings come back from its checkpoint.

A checkpoint's ``hyperparameters`` hold every run setting. A resume takes each one from there unless
its own command line gives that flag (``TrainConfig.explicit``: any spelling, abbreviation or alias
of it), so the short resume command continues the same run. A flag given with another value than
the checkpoint's is handled by its group:

- ``APPLIED``: changes only the rest of the run (learning rate and schedule from the resumed step
  on, the planned end, save / eval / log cadence, retention, precision...): applied, one line each;
- ``GUARDED``: would change which recipes the rest of the run sees or what one step is, so "every
  recipe once per epoch" no longer holds: refused (exit 2) unless ``--allow-config-change``, then
  applied with one warning each. Data files are compared by content (name, size, hash of the
  ends), so a file moved to another path is the same file and an edited one is not;
- ``ADAPTER``: the shape of a LoRA run's adapter (``--lora-r``, ``--lora-alpha``,
  ``--lora-target-modules``): the saved adapter was trained with them, so a change is refused
  (exit 2); with ``--allow-config-change`` a new ``--lora-alpha`` (a rescaling of the same weights)
  is applied with a warning, while another rank or other target modules are still refused: the
  saved adapter's tensors would not fit;
- ``RECORDED``: kept as the run's history, unused by a resume (the weights come from the
  checkpoint): a different flag is ignored, with a warning. A LoRA run's base model is rebuilt from
  ``--pretrained-model``, so there a new one (the same base moved elsewhere) is used, and its weights
  checked against the fingerprint the checkpoint recorded (``model/lora.py``);
- ``SESSION``: this session's business (which checkpoint, where to write, workers, progress...):
  never taken from the checkpoint.

A config file (``--config FILE.yaml``) counts as the command line: each setting it names is in
``explicit`` and goes through the same groups as a typed flag (a file with another batch size is
refused, one with another learning rate applied), settings it does not name come from the
checkpoint. Resuming with the file the run started with, or with the run's own ``settings.yaml``,
changes nothing.

A checkpoint without a setting (written before its flag existed) leaves this command's value, and
says so; a setting whose default would change what such a run did declares the value it had
(``legacy``: ``--dedup off``), which the resume keeps as if recorded. ``decide`` is the rule, a pure
function; ``settle`` adds the file checks and the log lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

from chef_genius.data import mixture
from chef_genius.data.fingerprint import content_identity, data_identity, is_content_identity
from chef_genius.errors import UserError
from chef_genius.settings.checks import check_optimizer, check_reporters
from chef_genius.settings.fields import Policy, by_policy, legacy_values, position_keys, settings_of, spec_of
from chef_genius.train.config import DATA_REQUIRED, TrainConfig, build_parser

log = logging.getLogger("chef_genius")

# Each setting's group is declared with it, in its section of the schema (``chef_genius/settings/sections/``).
APPLIED = by_policy(TrainConfig, Policy.APPLIED)
GUARDED = by_policy(TrainConfig, Policy.GUARDED)
ADAPTER = by_policy(TrainConfig, Policy.ADAPTER)
RECORDED = by_policy(TrainConfig, Policy.RECORDED)
SESSION = by_policy(TrainConfig, Policy.SESSION)
RESHAPING = ("lora_r", "lora_target_modules")  # ADAPTER settings the saved adapter's tensors cannot change

# The data files, and the key of the content identity each checkpoint saves beside the path.
FILES = {"data": "data_identity", "eval_data": "eval_data_identity"}
# Older checkpoints kept these only in their data position.
POSITION_KEYS = position_keys(TrainConfig)
# What checkpoints from before a setting existed ran with, where today's default would differ.
LEGACY = legacy_values(TrainConfig)
NOTES: dict[str, str] = {f.name: note for f in settings_of(TrainConfig) if (note := spec_of(f).note)}


@dataclass(frozen=True)
class Change:
    name: str
    old: object
    new: object

    def __str__(self) -> str:
        if isinstance(self.new, bool):
            words = self.name.replace("_", " ")
            return f"{flag_of(self.name, self.new)} ({words} {_shown(self.old)} -> {_shown(self.new)})"
        return f"{flag_of(self.name)} {_shown(self.old)} -> {_shown(self.new)}"


@dataclass
class Decision:
    values: dict  # this session's settings
    applied: list[Change] = field(default_factory=list)
    refused: list[Change] = field(default_factory=list)  # GUARDED changes
    adapter: list[Change] = field(default_factory=list)  # ADAPTER changes
    ignored: list[Change] = field(default_factory=list)  # RECORDED flags a resume does not use
    kept: list[str] = field(default_factory=list)  # taken from the checkpoint, unlike this command's
    unrecorded: list[str] = field(default_factory=list)  # run settings the checkpoint lacks


def decide(saved: dict, command: dict, explicit, position: dict | None = None) -> Decision:
    """This session's settings from the checkpoint's ``saved`` hyperparameters, the command line's
    values ``command`` and the names it gave ``explicit``ly (pure; data files are compared later)."""
    recorded = dict(saved)
    saved_position = position or {}
    for name, key in POSITION_KEYS.items():
        if name not in recorded and key in saved_position:
            recorded[name] = saved_position[key]
    for name, value in LEGACY.items():
        recorded.setdefault(name, value)
    out = Decision(values=dict(command))
    for name, value in command.items():
        if name in SESSION:
            continue
        if name not in recorded:
            out.unrecorded.append(name)
            continue
        old = recorded[name]
        if name == "pretrained_model" and recorded.get("lora_r") and name in explicit:
            out.values[name] = value  # a LoRA run rebuilds its base from it (checked by its fingerprint)
            if old != value:
                out.applied.append(Change(name, old, value))
            continue
        if name not in explicit or name in RECORDED:
            out.values[name] = old
            if name in explicit and old != value:
                out.ignored.append(Change(name, old, value))
            elif old != value and name not in RECORDED:
                out.kept.append(name)
        elif old != value and name not in FILES:
            group = out.refused if name in GUARDED else out.adapter if name in ADAPTER else out.applied
            group.append(Change(name, old, value))
    return out


def settle(config: TrainConfig, saved: dict | None, source: Path | None = None) -> TrainConfig:
    """The settings this session trains with: the command line's for a fresh run; for a resume from
    ``saved`` (a training state), the checkpoint's with the explicit flags on top, announced, or
    refused with a ``UserError`` (exit 2)."""
    if saved is None:
        if config.data is None:
            raise UserError(DATA_REQUIRED)
        return config
    hyper = saved.get("hyperparameters") or {}
    where = source.name if source is not None else "the checkpoint"
    decision = decide(hyper, config.to_dict(), config.explicit, saved.get("data_position"))
    if isinstance(decision.values.get("data"), str):  # checkpoints before several sources saved one path
        decision.values["data"] = [decision.values["data"]]
    decision.refused += file_changes(decision.values, hyper, where)
    if decision.refused and not config.allow_config_change:
        raise UserError(
            "the run does not match the checkpoint: "
            + "; ".join(map(str, decision.refused))
            + "; these change which recipes the rest of the run sees: drop them to resume the same "
            "run, or pass --allow-config-change to resume anyway (the sample order will differ)"
        )
    _check_adapter(decision.adapter, config.allow_config_change, where)
    decision.applied += decision.adapter
    step = saved.get("global_step", 0) + 1  # the first step this session trains
    for change in decision.refused:
        log.warning("config changed on resume: %s (the sample order differs from an uninterrupted run's)", change)
    for change in decision.applied:
        log.info("resume changes %s: %s", change, NOTES.get(change.name, "from step {step} on").format(step=step))
    for change in decision.ignored:
        log.warning(
            "%s is not used on a resume: the weights come from %s (the run keeps %s)",
            flag_of(change.name),
            where,
            _shown(change.old),
        )
    if decision.kept:
        log.info(
            "%s keeps the run's %s (give a flag to change one)",
            where,
            ", ".join(_as_flag(name, decision.values[name]) for name in decision.kept),
        )
    if decision.unrecorded:
        log.info(
            "%s does not record %s: this command's values are used",
            where,
            ", ".join(flag_of(name) for name in decision.unrecorded),
        )
    check_reporters(decision.values["report_to"])
    check_optimizer(decision.values["optimizer"])  # an inherited adamw-8bit on a machine without CUDA
    return dataclasses.replace(config, **decision.values)


def _check_adapter(changes: list[Change], allowed: bool, where: str) -> None:
    """A LoRA adapter's shape changed on a resume: refused (exit 2), a new alpha allowed with the flag."""
    if not changes:
        return
    reshaping = [c for c in changes if c.name in RESHAPING]
    if reshaping:
        raise UserError(
            f"{where} was trained with another adapter: "
            + "; ".join(map(str, reshaping))
            + ": its saved tensors do not fit that shape (not even with --allow-config-change); "
            "drop the flags to resume the run, or start a new run from the run's merged final "
            "model (--pretrained-model MODEL_OUTPUT)"
        )
    if not allowed:
        raise UserError(
            f"{where}'s adapter was trained with " + "; ".join(map(str, changes)) + " as the old "
            "value: drop the flag to resume the same run, or pass --allow-config-change to rescale "
            "the adapter from here on"
        )
    for change in changes:
        log.warning("adapter changed on resume: %s (the saved adapter's update is rescaled from here on)", change)


def file_changes(values: dict, saved: dict, where: str) -> list[Change]:
    """The data files, compared by content with the ones the checkpoint trained on (every byte: see
    ``data/fingerprint.py``); several ``--data`` sources as a set of (content, weight), whatever their
    order. A checkpoint from before the content fingerprint saved a hash of the first and last MiB
    only: compared on that, and an unchanged one is said to be unverifiable in the middle (the next
    checkpoints record the content)."""
    changes = []
    for name, key in FILES.items():
        paths = [s.path for s in mixture.parse_sources(values[name])] if name == "data" else [values[name]]
        for path in paths:
            if path is not None and not Path(path).is_file():
                raise UserError(
                    f"{where} was trained on {flag_of(name)} {path}, which is not there any more; "
                    f"pass {flag_of(name)} with the file's new place"
                )
        if key not in saved:  # an older checkpoint: nothing to compare with
            continue
        old = saved[key]
        sources = mixture.parse_sources(values[name])
        if name == "data" and not (isinstance(old, dict) and mixture.is_plain(sources)):  # several sources
            now = mixture.identity(sources)
            what = mixture.identity_changes(old, now)
            if what:
                changes.append(Change(name, _described(old), f"{_described(now)}: {'; '.join(what)}"))
            continue
        path = paths[0]
        content = old is None or is_content_identity(old)
        identity = content_identity(path) if content else data_identity(path)
        if identity != old:
            before, now = _described(old), _described(identity)
            changes.append(Change(name, before, now if now != before else f"{now}, other content"))
        elif not content:
            log.warning(
                "%s recorded %s %s by its size and first and last MiB only (written before content "
                "fingerprints): an edit in its middle cannot be told; its full content is recorded "
                "from the next checkpoint on",
                where,
                flag_of(name),
                path,
            )
    return changes


# ---------------------------------------------------------------------------------------------
# where a resumed run ends


def resumed_end(
    epochs: int, max_steps: int, saved: dict, explicit, step: int, reach: Callable[[int], int]
) -> tuple[int, int, list[str]]:
    """(epochs, max steps, log lines) of a run resumed at ``step``. ``reach(E)`` is the step at which
    the run ends its E-th epoch, counted from the checkpoint's data position (pure).

    A new ``--max-steps`` or ``--epochs`` on the command line says "train to here", so the run trains
    to it or the resume is refused (``UserError``, exit 2), never ending at once while claiming a later
    end. As in Hugging Face's Trainer, a ``--max-steps`` past the run's last epoch adds the epochs it
    needs (unless ``--epochs`` is given too); an ``--epochs`` past an inherited ``--max-steps`` lifts it
    (unless ``--max-steps`` is given too). Flags that repeat the checkpoint's values change nothing."""
    changed = [
        name
        for name, value in (("epochs", epochs), ("max_steps", max_steps))
        if name in explicit and saved.get(name) != value
    ]
    notes = []
    if "max_steps" in changed and max_steps and "epochs" not in explicit and reach(epochs) < max_steps:
        needed = epochs
        while reach(needed) < max_steps:  # every epoch adds at least one step
            needed += 1
        notes.append(
            f"--max-steps {max_steps} is past the run's last epoch (epoch {epochs}, step {reach(epochs)}): "
            f"the run now trains {needed} epochs, to reach step {max_steps}"
        )
        epochs = needed
    if "epochs" in changed and "max_steps" not in explicit and max_steps and max_steps < reach(epochs):
        notes.append(
            f"--epochs {epochs} goes past the run's --max-steps {max_steps}: the run now ends with its "
            f"last epoch, at step {reach(epochs)}"
        )
        max_steps = 0
    end = min(reach(epochs), max_steps) if max_steps else reach(epochs)
    given = " ".join(
        _as_flag(name, value) for name, value in (("epochs", epochs), ("max_steps", max_steps)) if name in changed
    )
    if "max_steps" in changed and max_steps > end:
        raise UserError(
            f"--max-steps {max_steps} is past the end of --epochs {epochs} (step {end}): raise "
            "--epochs, or drop it and the run adds the epochs --max-steps needs"
        )
    if "epochs" in changed and reach(epochs) > end:
        raise UserError(
            f"--epochs {epochs} ends at step {reach(epochs)}, past --max-steps {max_steps}: raise "
            f"--max-steps to {reach(epochs)}, or pass --max-steps 0 to run every epoch"
        )
    if changed and end <= step:
        raise UserError(
            f"the checkpoint is at step {step} and {given} ends the run at step {end}: nothing would "
            f"be trained; give a later end (--max-steps above {step}, or more --epochs)"
        )
    return epochs, max_steps, notes


# ---------------------------------------------------------------------------------------------
# applying the learning rate and the optimizer's settings


def resumed_scheduler_state(saved_state: dict | None, scheduler, step: int, explicit) -> dict:
    """The ``LambdaLR`` state a resume loads: this session's schedule (made from the run's settings)
    at ``step``; the checkpoint's peak LR unless ``--learning-rate`` was given; and the re-warm ramp
    of an earlier session that resumed without optimizer state, until it ends."""
    state = dict(saved_state or {})
    saved_fns = state.get("lr_lambdas") or []
    for fn, saved_fn in zip(scheduler.lr_lambdas, saved_fns):
        if isinstance(saved_fn, dict) and fn.rewarm_from is None and saved_fn.get("rewarm_from") is not None:
            fn.rewarm_from, fn.rewarm_steps = saved_fn["rewarm_from"], saved_fn.get("rewarm_steps", 0)
    planned = saved_fns[0].get("total_steps") if saved_fns and isinstance(saved_fns[0], dict) else None
    end = scheduler.lr_lambdas[0].total_steps
    if planned is not None and planned != end:
        log.info(
            "the run now ends at step %d (the checkpoint planned %d); the learning-rate schedule follows", end, planned
        )
    state["lr_lambdas"] = [dict(vars(fn)) for fn in scheduler.lr_lambdas]
    state["last_epoch"] = step
    if "learning_rate" in explicit or not state.get("base_lrs"):
        state["base_lrs"] = list(scheduler.base_lrs)
    return state


@contextlib.contextmanager
def explicit_optimizer_settings(optimizer, explicit):
    """Loading an optimizer state brings back the param groups' saved settings; an explicit flag keeps
    this run's value (``--weight-decay``; ``--learning-rate`` through the schedule)."""
    keys = [
        key for name, key in (("weight_decay", "weight_decay"), ("learning_rate", "initial_lr")) if name in explicit
    ]
    fresh = [{key: group[key] for key in keys if key in group} for group in optimizer.param_groups]
    yield
    for group, values in zip(optimizer.param_groups, fresh):
        group.update(values)


# ---------------------------------------------------------------------------------------------
# how a setting is named in messages


@functools.cache
def _actions() -> dict[str, list]:
    by_field: dict[str, list] = {}
    for action in build_parser()._actions:
        by_field.setdefault(action.dest, []).append(action)
    return by_field


def flag_of(name: str, value=None) -> str:
    """The flag that sets ``name`` (to ``value``, for on / off flags), as --help spells it."""
    actions = _actions().get(name, [])
    for action in actions:
        if isinstance(value, bool) and action.nargs == 0 and action.const is value:
            return action.option_strings[0]
    for action in actions:
        if action.nargs != 0:
            return action.option_strings[0]
    return actions[0].option_strings[0] if actions else "--" + name.replace("_", "-")


def _as_flag(name: str, value) -> str:
    if isinstance(value, bool):
        flag = flag_of(name, value)
        return flag if any(a.const is value for a in _actions().get(name, [])) else f"{flag} {_shown(value)}"
    return f"{flag_of(name)} {_shown(value)}"


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == []:
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def _described(identity: dict | list | None) -> str:
    if identity is None:
        return "none"
    if isinstance(identity, list):  # several sources, with weights
        weights = [f" x{e['weight']:g}" if e.get("weight", 1) != 1 else "" for e in identity]
        return " + ".join(f"{_described(e)}{w}" for e, w in zip(identity, weights))
    return f"{identity.get('name')} ({identity.get('size')} bytes)"
