"""Building a ``training_state.pt`` that a run did not leave: where the run's settings come from (sibling
checkpoints, the folder's own files, flags) and how the state is assembled from them. Shared by the
rebuild of a lost state (repair.py) and the importers of foreign formats (importers/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.doctor import foreign
from chef_genius.doctor import weights as wt
from chef_genius.settings.fields import position_keys
from chef_genius.train.config import TrainConfig
from chef_genius.train.schedule import Schedule, scheduler_state_at
from chef_genius.train.state import RunState


@dataclass
class Overrides:
    """Run settings given on the command line; they win over what the run's files say."""

    steps_per_epoch: int | None = None
    samples_per_step: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    total_steps: int | None = None
    lr_scheduler: str | None = None

    def values(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}


def candidate_folders(folder: Path) -> list[Path]:
    """Sibling checkpoints nearest in step first, then the run's output folder."""
    step = ckpt.step_of(folder) or 0
    siblings = [p for p in ckpt.list_checkpoints(folder.parent) if p.resolve() != folder.resolve()]
    return sorted(siblings, key=lambda p: abs(ckpt.checkpoint_step(p) - step)) + [folder.parent]


def run_settings(folder: Path, overrides: Overrides) -> tuple[dict, str]:
    """Hyper-parameters of the run (nearest sibling's saved ones, what the folder's own foreign files
    record: trainer_state.json), flags on top."""
    values, sources = {}, []
    for source in candidate_folders(folder):
        status, state, _ = foreign.read_state(source)
        slices = ckstate.unpack_training_state(state) if status == "ours" and state is not None else {}
        if slices.get(ckstate.SETTINGS):
            values.update(slices[ckstate.SETTINGS])
            values.setdefault("num_samples", slices[ckstate.DATA_POSITION].get("num_samples"))
            sources.append(source.name)
            break
    from chef_genius.doctor import importers  # they build on this module: looked up when called

    for importer in importers.IMPORTERS:  # the run's own files win over a converted sibling's copy
        recorded = importer.recorded_settings(folder)
        if recorded is not None:
            values.update(recorded[0])
            sources.append(recorded[1])
    if overrides.values():
        values.update(overrides.values())
        sources.append("command line")
    if "samples_per_step" not in values and values.get("batch_size"):
        values["samples_per_step"] = (
            values["batch_size"] * values.get("gradient_accumulation_steps", 1) * values.get("world_size", 1)
        )
    return values, " + ".join(sources) or "no saved run settings"


def schedule_of(settings: dict, step: int) -> tuple[Schedule, float, list[str]]:
    """The run's LR schedule; names the settings that fell back to the training defaults."""
    d = TrainConfig()
    assumed = [k for k in ("learning_rate", "warmup_steps", "lr_scheduler") if k not in settings]
    total = settings.get("total_steps") or (settings.get("steps_per_epoch") or 0) * settings.get("epochs", 0)
    if not total:  # only the stored copy of the schedule uses it; a resume takes the run's own flags
        total = max(step + 1, (settings.get("steps_per_epoch") or 0) * d.epochs)
        assumed.append("total_steps")
    schedule = Schedule(
        settings.get("warmup_steps", d.warmup_steps), total, settings.get("lr_scheduler", d.lr_scheduler)
    )
    return schedule, settings.get("learning_rate", d.learning_rate), assumed


def position_in_epoch(step: int, epoch: int, settings: dict) -> tuple[int, str]:
    """Samples of ``epoch`` consumed after ``step`` optimizer steps (with the note on how it was found)."""
    spe = settings["steps_per_epoch"]
    done = step - epoch * spe
    per_step, total = settings.get("samples_per_step"), settings.get("num_samples")
    if per_step and 0 <= done < spe:
        samples = done * per_step
        return (min(samples, total) if total else samples), f"sample {done * per_step}"
    return 0, "start of the epoch (the samples per step are unknown: pass --samples-per-step)"


def num_groups(model) -> int:
    return len(wt.our_layout(model)) if model is not None else 2


def load_plain(path: Path) -> dict | None:
    """A Hugging Face ``optimizer.pt`` / ``scheduler.pt`` under ``weights_only``; None when absent."""
    if not path.is_file():
        return None
    try:
        return ckstate.load_training_state(path)
    except ckpt.CheckpointError as err:
        raise ckpt.CheckpointError(str(err).replace("training-state ", "")) from None


def optimizer_for(saved: dict | None, model) -> tuple[dict | None, str]:
    if not saved or not saved.get("state"):
        return None, "state empty (re-warms on resume)"
    if model is None:
        return None, "state dropped: no config.json to check it against (re-warms on resume)"
    remapped, how = wt.remap_optimizer(saved, model)
    if remapped is None:
        return None, f"state dropped, it does not fit the model: {how} (re-warms on resume)"
    return remapped, f"state kept ({how} layout)"


def assemble(step, epoch, samples, settings, model, optimizer, rng_states, best_loss, text, extra=None):
    """(training-state values, the repair's sentence) at ``step``: the scheduler placed on the run's
    schedule, the data position, the settings saved for a resume."""
    schedule, lr, assumed = schedule_of(settings, step)
    if assumed:
        text += f"; assumed the training defaults for {', '.join(assumed)} (pass them if the run used others)"
    run_state = RunState(global_step=step, best_loss=float(best_loss) if best_loss is not None else None)
    position = {"epoch": epoch, "samples_in_epoch": samples}
    for key, name in {"num_samples": "num_samples", **position_keys(TrainConfig)}.items():
        if settings.get(key) is not None:
            position[name] = settings[key]
    hyper = {k: v for k, v in settings.items() if k not in ("num_samples", "samples_per_step")}
    state = ckstate.make_training_state(
        run_state,
        position,
        optimizer,
        scheduler_state_at(step, lr, schedule, num_groups(model)),
        [rng_states] if rng_states else [],
        hyper,
        {"repaired_by": "verify_and_fix_checkpoint", **(extra or {})},
    )
    return state, text
