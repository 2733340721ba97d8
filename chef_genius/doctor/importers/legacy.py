"""The replaced system's checkpoints ("legacy"): ``training_state.pt`` is a pickle holding numpy RNG
arrays (read through foreign's numpy allowlist), keys ``global_step``, ``epoch`` (1-based),
``best_loss``, ``epoch_losses``, ``optimizer_state_dict``, ``scheduler_state_dict``, ``rng_states`` =
{python_rng_state, numpy_rng_state, torch_rng_state, cuda_rng_state(_all)}. It wrote no manifest."""

from __future__ import annotations

from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.doctor import foreign
from chef_genius.doctor import state_builder as sb
from chef_genius.doctor.importers.base import Importer
from chef_genius.doctor.problems import Problem
from chef_genius.doctor.repairs import Repair


class LegacyImporter(Importer):
    kind = foreign.LEGACY
    converted = Repair.STATE_CONVERTED_LEGACY

    def detect(self, folder: Path, state_status: str) -> bool:
        return state_status == "legacy"

    @staticmethod
    def looks_like(folder: Path) -> bool:
        """Model files without a manifest of ours (tried after every other format)."""
        return (folder / ckpt.MODEL_CONFIG).is_file() or (folder / ckpt.WEIGHTS).is_file()

    def describe(self, report, folder: Path, state_status: str, state: dict | None) -> bool:
        if state_status != "legacy":
            return False  # model files with a lost state: verify's checks, a rebuild by --fix
        assert state is not None  # read_state returns the state with "legacy"
        report.fail(
            Problem.STATE_LEGACY,
            f"{ckpt.TRAINING_STATE} is in the replaced system's format (epoch "
            f"{state.get('epoch')} 1-based, numpy RNG): --fix converts it, keeping "
            "optimizer and scheduler",
        )
        report.global_step = int(state.get("global_step", 0))
        report.epoch = max(0, int(state.get("epoch", 1)) - 1)
        return True

    def converts(self, state_status: str | None) -> bool:
        return state_status == "legacy"

    def convert(self, folder: Path, report, model, overrides: sb.Overrides) -> tuple[dict, str]:
        return convert_state(folder, report.facts.state, model, overrides)


def convert_state(folder: Path, old: dict, model, overrides: sb.Overrides) -> tuple[dict, str]:
    settings, source = sb.run_settings(folder, overrides)
    step, epoch = int(old["global_step"]), max(0, int(old.get("epoch", 1)) - 1)
    samples, where = (
        sb.position_in_epoch(step, epoch, settings)
        if settings.get("steps_per_epoch")
        else (0, "start of the epoch (pass --steps-per-epoch and --samples-per-step for the exact position)")
    )
    optimizer, how = sb.optimizer_for(old.get("optimizer_state_dict"), model)
    sched = old.get("scheduler_state_dict") or {}
    if sched.get("base_lrs"):
        settings.setdefault("learning_rate", float(sched["base_lrs"][0]))
    extra = {"converted_from": "legacy", "epoch_losses": [float(v) for v in old.get("epoch_losses") or []]}
    return sb.assemble(
        step,
        epoch,
        samples,
        settings,
        model,
        optimizer,
        foreign.legacy_rng(old.get("rng_states")),
        old.get("best_loss"),
        f"converted the legacy state ({source}): step {step}, epoch {epoch + 1}, {where}; optimizer {how}",
        extra,
    )
