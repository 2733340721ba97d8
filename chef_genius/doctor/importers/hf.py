"""Hugging Face Trainer checkpoints: ``trainer_state.json``, ``optimizer.pt``, ``scheduler.pt``,
``rng_state[_N].pth``, ``training_args.bin`` (a full pickle of TrainingArguments: read by ``hf_args``,
never unpickled). Everything this project knows of the format is here, but the RNG layout
(``foreign.hf_rng``, beside the other RNG conversions)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import trust
from chef_genius.doctor import foreign
from chef_genius.doctor import hf_args
from chef_genius.doctor import loadable
from chef_genius.doctor import state_builder as sb
from chef_genius.doctor.importers.base import Importer
from chef_genius.doctor.problems import Problem
from chef_genius.doctor.repairs import Repair

if TYPE_CHECKING:
    from chef_genius.doctor.report import Report

HF_STATE = "trainer_state.json"
HF_OPTIMIZER = "optimizer.pt"
HF_SCHEDULER = "scheduler.pt"
RNG_FILES = ("rng_state.pth", "rng_state_0.pth")


class HFTrainerImporter(Importer):
    kind = foreign.HF
    converted = Repair.STATE_CONVERTED_HF
    files = (HF_STATE, HF_OPTIMIZER, HF_SCHEDULER, *RNG_FILES)

    def detect(self, folder: Path, state_status: str) -> bool:
        return (folder / HF_STATE).is_file()

    def describe(self, report, folder: Path, state_status: str, state: dict | None) -> bool:
        if state_status != "missing":
            return False
        report.fail(
            Problem.HF_TRAINER_STATE,
            f"Hugging Face Trainer checkpoint: no {ckpt.TRAINING_STATE} yet (--fix "
            "builds it from trainer_state.json, training_args.bin, optimizer.pt, "
            "scheduler.pt, rng_state*.pth)",
        )
        _check_settings(report, folder)
        return True

    def check_files(self, report, folder: Path) -> None:
        for name in RNG_FILES:
            if (folder / name).is_file():
                problem = loadable.rng_file_problem(folder / name)
                if problem:
                    report.fail(Problem.RNG_UNREADABLE, f'{problem}; never listed as "no RNG state"')

    def convert(self, folder: Path, report, model, overrides: sb.Overrides) -> tuple[dict, str]:
        return convert_state(folder, model, overrides)

    def recorded_settings(self, folder: Path) -> tuple[dict, str] | None:
        if not (folder / HF_STATE).is_file():
            return None
        values, _ = read_settings(folder)
        return values, HF_STATE + (" + training_args.bin" if "learning_rate" in values else "")


def _check_settings(report: Report, folder: Path) -> None:
    """What the Hugging Face run's files tell about its schedule and shape, and what must come from flags."""
    values, problems = read_settings(folder)
    missing = unrecovered(values)
    if "--learning-rate" in missing and (folder / HF_SCHEDULER).is_file():
        missing.remove("--learning-rate")  # scheduler.pt keeps the peak LR
    if missing:
        why = "; ".join(problems) or "not recorded"
        needs = " ".join(f + " ..." for f in missing)
        report.fail(
            Problem.HF_SETTINGS_MISSING,
            f"the run's {', '.join(f[2:] for f in missing)} could not be recovered ({why}): --fix needs {needs}",
        )
        return
    shown = ", ".join(
        f"{k} {values[k]}" for k in ("learning_rate", "lr_scheduler", "warmup_steps", "samples_per_step") if k in values
    )
    report.ok(f"Hugging Face run settings read without unpickling: {shown}")
    if problems:
        report.fail(Problem.HF_SETTINGS_PARTIAL, "; ".join(problems), "warn")


def read_trainer_state(folder: Path) -> dict:
    try:
        value = trust.read_json(folder / HF_STATE)
    except trust.Untrusted as err:
        raise ckpt.CheckpointError(str(err)) from None
    if not isinstance(value, dict):
        raise ckpt.CheckpointError(f"{HF_STATE} does not hold a JSON object")
    return value


def hyperparameters(trainer_state: dict) -> dict:
    """What ``trainer_state.json`` tells about the run's shape. Its ``train_batch_size`` is the batch
    of one process without the accumulation: never taken as the samples per optimizer step."""
    values = {}
    epochs, max_steps = trainer_state.get("num_train_epochs"), trainer_state.get("max_steps")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e12 for v in (epochs, max_steps))
    if numbers:  # a stranger's file: anything else is ignored (the flags must then supply it)
        assert epochs is not None and max_steps is not None  # numbers, as just checked
        values["steps_per_epoch"] = math.ceil(max_steps / epochs)
        values["total_steps"] = int(max_steps)
        values["epochs"] = int(epochs)
    return values


# what a Hugging Face run must tell for an exact conversion, and the flag that supplies each
NEEDED = {
    "learning_rate": "--learning-rate",
    "lr_scheduler": "--lr-scheduler",
    "warmup_steps": "--warmup-steps",
    "samples_per_step": "--samples-per-step",
    "steps_per_epoch": "--steps-per-epoch",
}


def read_settings(folder: Path) -> tuple[dict, list[str]]:
    """(run settings, what could not be read) of a Hugging Face Trainer checkpoint, from
    ``trainer_state.json`` and ``training_args.bin`` (read by ``hf_args``: nothing in it runs)."""
    problems = []
    try:
        values = hyperparameters(read_trainer_state(folder))
    except ckpt.CheckpointError as err:  # a link, a huge or hostile trainer_state.json: a sentence
        values = {}
        problems.append(str(err))
    path = folder / hf_args.HF_ARGS
    if not path.is_file():
        problems.append(f"{hf_args.HF_ARGS} is missing")
    else:
        try:
            args, unknown = hf_args.run_settings(path)
        except hf_args.ArgsError as err:
            problems.append(str(err))
        else:
            problems += [f"{hf_args.HF_ARGS}: {text}" for text in unknown]
            values.update(args)
    if "warmup_ratio" in values:
        ratio = values.pop("warmup_ratio")
        if values.get("total_steps"):  # as Hugging Face rounds it
            values["warmup_steps"] = math.ceil(values["total_steps"] * ratio)
    if values.get("batch_size") and "gradient_accumulation_steps" in values and "world_size" in values:
        values["samples_per_step"] = values["batch_size"] * values["gradient_accumulation_steps"] * values["world_size"]
    return values, problems


def unrecovered(values: dict) -> list[str]:
    """The flags that must supply what a Hugging Face run's files did not tell."""
    return [flag for name, flag in NEEDED.items() if name not in values]


def convert_state(folder: Path, model, overrides: sb.Overrides) -> tuple[dict, str]:
    """A ``training_state.pt`` from Hugging Face Trainer's files: its schedule (learning rate,
    scheduler, warmup, planned end) and run shape from ``training_args.bin``, the data position as
    optimizer steps x batch x accumulation x processes, optimizer moments and RNG kept. What the
    files do not tell must come from flags: the conversion refuses rather than assume a default."""
    trainer_state = read_trainer_state(folder)
    settings, source = sb.run_settings(folder, overrides)
    _, problems = read_settings(folder)
    sched = sb.load_plain(folder / HF_SCHEDULER) or {}
    if sched.get("base_lrs"):  # the peak LR, even when training_args.bin could not be read
        settings.setdefault("learning_rate", float(sched["base_lrs"][0]))
    needed = unrecovered(settings)
    if needed:
        why = "; ".join(problems) or "the run's files do not record them"
        raise ckpt.CheckpointError(
            f"the run's settings are not all known ({why}): pass {' '.join(needed)} "
            "with the values the Hugging Face run used"
        )
    step = int(trainer_state["global_step"])
    spe = settings["steps_per_epoch"]
    epoch = step // spe if spe else int(math.floor(float(trainer_state.get("epoch") or 0.0) + 1e-9))
    samples = (step - epoch * spe) * settings["samples_per_step"]
    saved_opt = sb.load_plain(folder / HF_OPTIMIZER)
    optimizer, how = sb.optimizer_for(saved_opt, model)
    best = trainer_state.get("best_metric")
    text = (
        f"built {ckpt.TRAINING_STATE} from the Hugging Face Trainer files ({source}): "
        f"step {step}, epoch {epoch + 1}, "
        f"sample {samples} ({step - epoch * spe} steps x {settings['samples_per_step']} samples); "
        f"schedule {settings['lr_scheduler']} from lr {settings['learning_rate']:g}, warmup "
        f"{settings['warmup_steps']}, ending at step {settings.get('total_steps', '?')}; optimizer {how} "
        "(the sample order is this project's from here on)"
    )
    return sb.assemble(
        step,
        epoch,
        samples,
        settings,
        model,
        optimizer,
        foreign.hf_rng(folder),
        best,
        text,
        {"converted_from": "hf_trainer"},
    )
