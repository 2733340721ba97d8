"""``Accelerator.save_state`` folders: ``model.safetensors`` (no config, no tokenizer),
``optimizer.bin``, ``scheduler.bin``, ``random_states_N.pkl`` (numpy arrays, read through foreign's
allowlist: ``foreign.accelerate_rng``, beside the other RNG conversions), maybe ``sampler.bin``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from chef_genius.checkpoint import layout as ckpt
from chef_genius.doctor import foreign
from chef_genius.doctor import state_builder as sb
from chef_genius.doctor.importers.base import Importer
from chef_genius.doctor.problems import Problem
from chef_genius.doctor.repairs import Repair

if TYPE_CHECKING:
    from chef_genius.doctor.report import Report

ACC_OPTIMIZER = "optimizer.bin"
ACC_SCHEDULER = "scheduler.bin"
ACC_SAMPLER = "sampler.bin"


class AccelerateImporter(Importer):
    kind = foreign.ACCELERATE
    converted = Repair.STATE_CONVERTED_ACCELERATE

    def detect(self, folder: Path, state_status: str) -> bool:
        return (folder / ACC_OPTIMIZER).is_file() or (folder / foreign.ACC_RNG).is_file()

    def describe(self, report, folder: Path, state_status: str, state: dict | None) -> bool:
        if state_status != "missing":
            return False
        _check_folder(report, folder)
        return True

    def convert(self, folder: Path, report, model, overrides: sb.Overrides) -> tuple[dict, str]:
        return convert_state(folder, model, overrides)


def _check_folder(report: Report, folder: Path) -> None:
    """An ``Accelerator.save_state`` folder: what --fix can build from it and what it cannot know."""
    have = [n for n in (ACC_OPTIMIZER, ACC_SCHEDULER, foreign.ACC_RNG) if (folder / n).is_file()]
    lacking = [n for n in (ACC_OPTIMIZER, ACC_SCHEDULER, foreign.ACC_RNG) if n not in have]
    report.fail(
        Problem.ACCELERATE_STATE,
        f"accelerate save_state folder: no {ckpt.TRAINING_STATE} yet; --fix "
        f"builds it from {', '.join(have)}"
        + (f" ({', '.join(lacking)} missing)" if lacking else "")
        + f", and takes {ckpt.MODEL_CONFIG} and the tokenizer from --pretrained-model or a sibling checkpoint",
    )
    if (folder / foreign.ACC_RNG).is_file():
        try:
            foreign.load_with_numpy(folder / foreign.ACC_RNG)
        except (foreign.UnsafePickle, ckpt.CheckpointError) as err:
            report.fail(Problem.ACCELERATE_RNG_UNSAFE, f"{err} (the RNG state will not be restored)", "warn")
    report.fail(
        Problem.ACCELERATE_UNKNOWN,
        "not recorded by accelerate: steps per epoch and samples per step (pass "
        "--steps-per-epoch, --samples-per-step), the LR schedule's shape "
        "(--warmup-steps, --lr-scheduler, --total-steps) unless a sibling has them"
        + (
            f"; {ACC_SAMPLER}'s position is not used (the sample order is this project's)"
            if (folder / ACC_SAMPLER).is_file()
            else ""
        ),
        "warn",
    )


def convert_state(folder: Path, model, overrides: sb.Overrides) -> tuple[dict, str]:
    """A ``training_state.pt`` from an ``Accelerator.save_state`` folder: optimizer moments of
    ``optimizer.bin``, the scheduler position and peak LR of ``scheduler.bin``, the RNG of
    ``random_states_0.pkl``; epoch and position from --steps-per-epoch / --samples-per-step (or a
    sibling's settings). The reply lists what accelerate does not record."""
    if model is None:
        raise ckpt.CheckpointError(
            f"no {ckpt.MODEL_CONFIG} to check {ACC_OPTIMIZER} against: pass "
            "--pretrained-model DIR (the model the run started from)"
        )
    sched = sb.load_plain(folder / ACC_SCHEDULER) or {}
    step = ckpt.step_of(folder)
    if step is None:
        step = sched.get("last_epoch")
    if not isinstance(step, int):
        raise ckpt.CheckpointError(
            f"the step is unknown (no {ACC_SCHEDULER}, and the folder is not named "
            f"{ckpt.PREFIX}N): rename the folder to {ckpt.PREFIX}<step>"
        )
    settings, source = sb.run_settings(folder, overrides)
    if not settings.get("steps_per_epoch"):
        raise ckpt.CheckpointError(
            "accelerate does not record the steps per epoch: pass --steps-per-epoch N "
            "(and --samples-per-step N for the position inside the epoch)"
        )
    if sched.get("base_lrs"):
        settings.setdefault("learning_rate", float(sched["base_lrs"][0]))
    epoch = step // settings["steps_per_epoch"]
    samples, where = sb.position_in_epoch(step, epoch, settings)
    optimizer, how = sb.optimizer_for(sb.load_plain(folder / ACC_OPTIMIZER), model)
    rng_states = foreign.accelerate_rng(folder)
    lost = [] if rng_states else ["the RNG state (random_states_0.pkl missing or refused)"]
    lost += (
        [f"{ACC_SAMPLER}'s position (the sample order is this project's)"] if (folder / ACC_SAMPLER).is_file() else []
    )
    lost += (
        [f"the RNG of processes after the first ({len(list(folder.glob('random_states_*.pkl')))} saved)"]
        if (folder / "random_states_1.pkl").is_file()
        else []
    )
    position = f"scheduler at step {sched['last_epoch']}" if "last_epoch" in sched else "no scheduler.bin"
    text = (
        f"built {ckpt.TRAINING_STATE} from the accelerate save_state files ({source}): step {step} ({position}), "
        f"epoch {epoch + 1}, {where}; optimizer {how}" + (f"; not recovered: {'; '.join(lost)}" if lost else "")
    )
    return sb.assemble(
        step, epoch, samples, settings, model, optimizer, rng_states, None, text, {"converted_from": "accelerate"}
    )
