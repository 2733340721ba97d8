"""Repairs of one checkpoint folder, acting on a ``verify`` report. Never destroys data.

Every file about to change is first copied into ``backup-<time>/`` inside the checkpoint (unless
``no_backup``), every write is atomic, and nothing that failed a content check (truncated, flipped
bytes, NaN, unsafe pickle) is ever blessed by a rebuilt manifest: those are reported together with
the newest healthy sibling to resume from instead.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import disk, trust
from chef_genius.checkpoint import weight_files
from chef_genius.doctor import foreign
from chef_genius.doctor import loadable
from chef_genius.doctor import weights as wt
from chef_genius.errors import printable
from chef_genius.model import wrappers
from chef_genius.train import rng
from chef_genius.train.config import TrainConfig
from chef_genius.train.schedule import Schedule, scheduler_state_at
from chef_genius.train.state import RunState
from chef_genius.doctor.verify import FATAL, SOFT, Report, verify

log = logging.getLogger(__name__)

# Problems a sibling's byte-identical copy (by the manifest's sha256) can undo.
RESTORABLE = {"file_corrupt", "manifest_invalid", "config_missing", "config_unreadable", "tokenizer_missing",
              "tokenizer_unreadable", "generation_config_missing", "generation_config_unreadable"}
COPYABLE = (ckpt.MODEL_CONFIG, ckpt.GENERATION_CONFIG, *ckpt.TOKENIZER_FILES)


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


class Fixer:
    def __init__(self, folder: Path, backup: bool = True, dry_run: bool = False, overrides: Overrides | None = None,
                 pretrained: Path | None = None):
        self.folder = Path(folder)
        self.pretrained = Path(pretrained) if pretrained else None  # where config / tokenizer may come from
        self.backup = backup
        self.dry_run = dry_run
        self.overrides = overrides or Overrides()
        self.backup_dir: Path | None = None
        self.repairs: list[dict] = []
        self.unfixed: list[str] = []  # repairs that were needed but could not be made, and why

    # -----------------------------------------------------------------------------------------
    def run(self) -> Report:
        before = verify(self.folder, deep=True)
        codes = before.codes()
        if codes & RESTORABLE and not codes & {"untrusted_entry", "state_unsafe"} \
                and self._restore_from_siblings() and not self.dry_run:
            before = verify(self.folder, deep=True)
        codes = before.codes()
        if not codes or codes & (FATAL - {"state_unreadable"}):
            before.repairs = self.repairs
            return before
        try:
            self._repair(before, codes)
        except Exception as err:  # read-only mount, permissions, full disk: each write is atomic, so
            if not (isinstance(err, OSError) or disk.disk_full(err)):
                raise
            self.unfixed.append(f"stopped repairing: {os_sentence(err)}; every file is either its old or "
                                "its new version, none half-written")
        after = verify(self.folder, deep=True) if not self.dry_run else before
        after.repairs = self.repairs
        after.lines += [("FAIL", text) for text in self.unfixed]
        after.facts["unfixed"] = list(self.unfixed)
        if self.unfixed and after.valid:
            after.fail("repair_incomplete", self.unfixed[0])
        return after

    def _restore_from_siblings(self) -> bool:
        """Damaged or lost files the manifest lists (not the weights, not the state) replaced by a
        sibling's copy whose size and sha256 are the manifest's: the original bytes, proven."""
        manifest = ckmanifest.read_manifest(self.folder)
        if manifest is None or not manifest.get("complete") or not all(
                trust.confined(self.folder, n) for n in manifest["files"]):
            return False
        restored = False
        for name, entry in manifest["files"].items():
            path = self.folder / name
            if ckpt.is_weights_file(name) or name == ckpt.TRAINING_STATE or "/" in name or not isinstance(entry, dict):
                continue
            if trust.regular_file(path) and path.stat().st_size == entry.get("size") and \
                    ckfiles.sha256_file(path) == entry.get("sha256"):
                continue
            source = next((s / name for s in candidate_folders(self.folder) if trust.regular_file(s / name)
                           and (s / name).stat().st_size == entry.get("size")
                           and ckfiles.sha256_file(s / name) == entry.get("sha256")), None)
            if source is None:
                continue
            try:
                if not self.dry_run:
                    self.keep(path, always=True)  # the damaged original, even with --no-backup
                    ckfiles.atomic_write_bytes(path, source.read_bytes())
            except OSError as err:
                self.unfixed.append(f"could not restore {name}: {os_sentence(err)}")
                return restored
            self.note("file_restored", f"restored {name} from {source.parent} (its sha256 is the manifest's)")
            restored = True
        return restored

    def _repair(self, before: Report, codes: set[str]) -> None:
        if codes & {"weights_prefixed", "weights_bin"}:
            self._rewrite_weights(before)
        for code, names in (("config_missing", (ckpt.MODEL_CONFIG,)), ("generation_config_missing",
                             (ckpt.GENERATION_CONFIG,)), ("tokenizer_missing", ckpt.TOKENIZER_FILES)):
            if code in codes:
                self._copy_from_run(names)
        model = before.facts.get("model") or wt.meta_model(self.folder, None, before.facts.get("header"))
        if codes & {"state_missing", "state_unreadable", "state_corrupt", "state_legacy", "hf_trainer_state",
                    "accelerate_state"}:
            self._write_state(before, model)
        if not (self.repairs or "manifest_invalid" in codes):
            return
        if not self.dry_run:  # the gate: a complete manifest only over files that all load
            if foreign.read_state(self.folder)[0] != "ours":
                return  # no training state of ours could be written (the reason is in unfixed)
            gate = verify(self.folder, deep=True, manifest=False)
            blocking = [p for p in gate.problems if p["code"] not in SOFT]
            if blocking:
                self.unfixed.append(f"no manifest written: {blocking[0]['message']}")
                return
        self._rebuild_manifest()

    def note(self, code: str, text: str) -> None:
        self.repairs.append({"code": code, "message": ("would: " if self.dry_run else "") + text})

    def keep(self, path: Path, always: bool = False) -> None:
        """Copy ``path`` into the backup folder before it changes (``always``: even with --no-backup)."""
        if not (self.backup or always) or self.dry_run or not path.is_file():
            return
        if self.backup_dir is None:
            self.backup_dir = self.folder / f"backup-{time.strftime('%Y%m%d-%H%M%S')}"
            self.backup_dir.mkdir(exist_ok=True)
            self.note("backup", f"originals kept in {self.backup_dir.name}/")
        shutil.copy2(path, self.backup_dir / path.name)

    # -----------------------------------------------------------------------------------------
    def _rewrite_weights(self, report: Report) -> None:
        """Wrapper prefixes removed from every weight name (each shard and the index), and a
        ``pytorch_model.bin`` converted to ``model.safetensors``; the .bin is moved to the backup
        folder even with --no-backup (the original of a conversion is always kept)."""
        layout, files = report.facts["weights_layout"], report.facts["weight_files"]
        if not self.dry_run:
            for name, data in wt.stripped_files(self.folder, layout, files).items():
                self.keep(self.folder / name)
                ckfiles.atomic_write_bytes(self.folder / name, data)
            if layout == "bin":
                self.keep(files[0], always=True)
                files[0].unlink()
        if "weights_prefixed" in report.codes():
            where = {"single": ckpt.WEIGHTS, "sharded": f"{len(files)} shards and {ckpt.WEIGHTS_INDEX}",
                     "bin": ckpt.WEIGHTS_BIN}[layout]
            self.note("prefixes_stripped", f"removed _orig_mod./module. prefixes from {where}")
        if layout == "bin":
            self.note("weights_converted", f"converted {ckpt.WEIGHTS_BIN} to {ckpt.WEIGHTS} (same tensors; the "
                                           "original moved to the backup folder)")

    def _copy_from_run(self, names) -> None:
        for source in ([self.pretrained] if self.pretrained else []) + candidate_folders(self.folder):
            found = [n for n in names if trust.regular_file(source / n)]
            if not found or not _same_model(self.folder, source):
                continue
            for name in found:
                if not self.dry_run:
                    ckfiles.atomic_write_bytes(self.folder / name, (source / name).read_bytes())
            self.note("file_copied", f"copied {', '.join(found)} from {source}")
            return

    def _write_state(self, report: Report, model) -> None:
        kind = report.kind
        try:
            if kind == foreign.LEGACY and report.facts["state_status"] == "legacy":
                state, text = convert_legacy(self.folder, report.facts["state"], model, self.overrides)
                code = "state_converted_legacy"
            elif kind == foreign.HF:
                state, text = convert_hf(self.folder, model, self.overrides)
                code = "state_converted_hf"
            elif kind == foreign.ACCELERATE:
                state, text = convert_accelerate(self.folder, model, self.overrides)
                code = "state_converted_accelerate"
            else:
                state, text = rebuild_state(self.folder, model, self.overrides)
                code = "state_rebuilt"
        except ckpt.CheckpointError as err:
            self.unfixed.append(f"cannot build {ckpt.TRAINING_STATE}: {err}")
            return
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:  # hostile plain values
            self.unfixed.append(f"cannot build {ckpt.TRAINING_STATE}: the old state or trainer_state.json holds "
                                f"values of the wrong kind ({type(err).__name__}: {printable(str(err), 80)})")
            return
        if not self.dry_run:
            # a state this tool cannot read is kept even with --no-backup: it may be readable elsewhere
            damaged = report.facts["state_status"] == "unreadable" or "state_corrupt" in report.codes()
            self.keep(self.folder / ckpt.TRAINING_STATE, always=damaged)
            ckfiles.atomic_torch_save(self.folder / ckpt.TRAINING_STATE, state)
        self.note(code, text)

    def _rebuild_manifest(self) -> None:
        step = ckpt.step_of(self.folder)
        if not self.dry_run:
            if step is None:
                step = int(ckstate.load_training_state(self.folder)["global_step"])
            self.keep(self.folder / ckpt.MANIFEST)
            ckfiles.atomic_write_json(self.folder / ckpt.MANIFEST, ckmanifest.build_manifest(self.folder, step))
        self.note("manifest_rebuilt", f"rebuilt {ckpt.MANIFEST}")


def fix(folder: str | Path, backup: bool = True, dry_run: bool = False, overrides: Overrides | None = None,
        pretrained: str | Path | None = None) -> Report:
    return Fixer(Path(folder), backup, dry_run, overrides, pretrained).run()


# ---------------------------------------------------------------------------------------------
# where the run's settings and files come from

def candidate_folders(folder: Path) -> list[Path]:
    """Sibling checkpoints nearest in step first, then the run's output folder."""
    step = ckpt.step_of(folder) or 0
    siblings = [p for p in ckpt.list_checkpoints(folder.parent) if p.resolve() != folder.resolve()]
    return sorted(siblings, key=lambda p: abs(ckpt.step_of(p) - step)) + [folder.parent]


def _same_model(folder: Path, source: Path) -> bool:
    """``source`` belongs to the same model: identical config.json, or shapes that fit our weights."""
    mine, theirs = folder / ckpt.MODEL_CONFIG, source / ckpt.MODEL_CONFIG
    if trust.regular_file(mine):
        return trust.regular_file(theirs) and mine.read_bytes() == theirs.read_bytes()
    if not trust.regular_file(theirs):
        return False
    try:
        raw = weight_files.read_weights(folder)[1]  # any layout, every shard through trust's bounded reader
    except ValueError:
        return False
    if not raw or loadable.layers_problem(source, raw) or loadable.config_problem(source):
        return False
    header = {wrappers.strip(k): tuple(v["shape"]) for k, v in raw.items()}
    model = wt.meta_model(source)
    shapes = wt.expected_tensors(model)[0] if model is not None else {}
    return bool(header) and all(shapes.get(k) == v for k, v in header.items())


def run_settings(folder: Path, overrides: Overrides) -> tuple[dict, str]:
    """Hyper-parameters of the run (nearest sibling's saved ones, trainer_state.json), flags on top."""
    values, sources = {}, []
    for source in candidate_folders(folder):
        status, state, _ = foreign.read_state(source)
        slices = ckstate.unpack_training_state(state) if status == "ours" else {}
        if slices.get(ckstate.SETTINGS):
            values.update(slices[ckstate.SETTINGS])
            values.setdefault("num_samples", slices[ckstate.DATA_POSITION].get("num_samples"))
            sources.append(source.name)
            break
    if (folder / foreign.HF_STATE).is_file():  # the run's own files win over a converted sibling's copy
        hf_values, _ = foreign.hf_settings(folder)
        values.update(hf_values)
        sources.append(foreign.HF_STATE + (" + training_args.bin" if "learning_rate" in hf_values else ""))
    if overrides.values():
        values.update(overrides.values())
        sources.append("command line")
    if "samples_per_step" not in values and values.get("batch_size"):
        values["samples_per_step"] = (values["batch_size"] * values.get("gradient_accumulation_steps", 1)
                                      * values.get("world_size", 1))
    return values, " + ".join(sources) or "no saved run settings"


def _schedule(settings: dict, step: int) -> tuple[Schedule, float, list[str]]:
    """The run's LR schedule; names the settings that fell back to the training defaults."""
    d = TrainConfig()
    assumed = [k for k in ("learning_rate", "warmup_steps", "lr_scheduler") if k not in settings]
    total = settings.get("total_steps") or (settings.get("steps_per_epoch") or 0) * settings.get("epochs", 0)
    if not total:  # only the stored copy of the schedule uses it; a resume takes the run's own flags
        total = max(step + 1, (settings.get("steps_per_epoch") or 0) * d.epochs)
        assumed.append("total_steps")
    schedule = Schedule(settings.get("warmup_steps", d.warmup_steps), total, settings.get("lr_scheduler", d.lr_scheduler))
    return schedule, settings.get("learning_rate", d.learning_rate), assumed


def _position(step: int, epoch: int, settings: dict) -> tuple[int, str]:
    """Samples of ``epoch`` consumed after ``step`` optimizer steps (with the note on how it was found)."""
    spe = settings["steps_per_epoch"]
    done = step - epoch * spe
    per_step, total = settings.get("samples_per_step"), settings.get("num_samples")
    if per_step and 0 <= done < spe:
        samples = done * per_step
        return (min(samples, total) if total else samples), f"sample {done * per_step}"
    return 0, "start of the epoch (the samples per step are unknown: pass --samples-per-step)"


def _num_groups(model) -> int:
    return len(wt.our_layout(model)) if model is not None else 2


def rebuild_state(folder: Path, model, overrides: Overrides) -> tuple[dict, str]:
    """A ``training_state.pt`` for a checkpoint that lost it: position and LR exact, optimizer empty."""
    settings, source = run_settings(folder, overrides)
    step = ckpt.step_of(folder)
    if step is None:
        raise ckpt.CheckpointError(f"the step is unknown (the folder is not named {ckpt.PREFIX}N)")
    if not settings.get("steps_per_epoch"):
        raise ckpt.CheckpointError("the steps per epoch are unknown (no sibling checkpoint with saved settings): "
                                   "pass --steps-per-epoch N")
    epoch = step // settings["steps_per_epoch"]
    samples, where = _position(step, epoch, settings)
    seed = settings.get("seed", TrainConfig().seed)
    return _assemble(step, epoch, samples, settings, model, None, seeded_rng(seed, step), None,
                     f"rebuilt {ckpt.TRAINING_STATE} from {source}: step {step}, epoch {epoch + 1}, {where}; "
                     "optimizer state empty (re-warms on resume); RNG seeded from the run's seed and the step",
                     {"rebuilt": ["optimizer_state_dict", "rng_states", "best_loss"]})


def seeded_rng(seed: int, step: int) -> dict:
    """RNG states in ``train/rng``'s layout, drawn from ``seed`` and ``step`` alone (the process's own
    generators are left untouched)."""
    return rng.seeded((int(seed) * 1_000_003 + int(step)) % 2**32)


def os_sentence(err: Exception) -> str:
    """An OSError (or torch's words for a full disk) as the operator reads it: what, where, what to do."""
    import errno
    if not isinstance(err, OSError):
        return "the disk is full; free space or pass --no-backup"
    where = f" ({err.filename})" if err.filename else ""
    if err.errno == errno.EROFS:
        return f"the file system is read-only{where}; copy the checkpoint to a writable disk and repair the copy"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}; run as the checkpoint's owner or repair a copy"
    if err.errno == errno.ENOSPC:
        return f"the disk is full{where}; free space or pass --no-backup"
    if err.errno == errno.EISDIR:
        return f"a folder is where a file belongs{where}"
    return f"{err.strerror or type(err).__name__}{where}"


def convert_legacy(folder: Path, old: dict, model, overrides: Overrides) -> tuple[dict, str]:
    settings, source = run_settings(folder, overrides)
    step, epoch = int(old["global_step"]), max(0, int(old.get("epoch", 1)) - 1)
    samples, where = _position(step, epoch, settings) if settings.get("steps_per_epoch") else (
        0, "start of the epoch (pass --steps-per-epoch and --samples-per-step for the exact position)")
    optimizer, how = _optimizer(old.get("optimizer_state_dict"), model)
    sched = old.get("scheduler_state_dict") or {}
    if sched.get("base_lrs"):
        settings.setdefault("learning_rate", float(sched["base_lrs"][0]))
    extra = {"converted_from": "legacy", "epoch_losses": [float(v) for v in old.get("epoch_losses") or []]}
    return _assemble(step, epoch, samples, settings, model, optimizer, foreign.legacy_rng(old.get("rng_states")),
                     old.get("best_loss"), f"converted the legacy state ({source}): step {step}, epoch {epoch + 1}, "
                     f"{where}; optimizer {how}", extra)


def convert_hf(folder: Path, model, overrides: Overrides) -> tuple[dict, str]:
    """A ``training_state.pt`` from Hugging Face Trainer's files: its schedule (learning rate,
    scheduler, warmup, planned end) and run shape from ``training_args.bin``, the data position as
    optimizer steps x batch x accumulation x processes, optimizer moments and RNG kept. What the
    files do not tell must come from flags: the conversion refuses rather than assume a default."""
    import math
    trainer_state = foreign.hf_trainer_state(folder)
    settings, source = run_settings(folder, overrides)
    _, problems = foreign.hf_settings(folder)
    sched = _load_plain(folder / foreign.HF_SCHEDULER) or {}
    if sched.get("base_lrs"):  # the peak LR, even when training_args.bin could not be read
        settings.setdefault("learning_rate", float(sched["base_lrs"][0]))
    needed = foreign.hf_unrecovered(settings)
    if needed:
        why = "; ".join(problems) or "the run's files do not record them"
        raise ckpt.CheckpointError(f"the run's settings are not all known ({why}): pass {' '.join(needed)} "
                                   "with the values the Hugging Face run used")
    step = int(trainer_state["global_step"])
    spe = settings["steps_per_epoch"]
    epoch = step // spe if spe else int(math.floor(float(trainer_state.get("epoch") or 0.0) + 1e-9))
    samples = (step - epoch * spe) * settings["samples_per_step"]
    saved_opt = _load_plain(folder / foreign.HF_OPTIMIZER)
    optimizer, how = _optimizer(saved_opt, model)
    best = trainer_state.get("best_metric")
    text = (f"built {ckpt.TRAINING_STATE} from the Hugging Face Trainer files ({source}): step {step}, epoch {epoch + 1}, "
            f"sample {samples} ({step - epoch * spe} steps x {settings['samples_per_step']} samples); "
            f"schedule {settings['lr_scheduler']} from lr {settings['learning_rate']:g}, warmup "
            f"{settings['warmup_steps']}, ending at step {settings.get('total_steps', '?')}; optimizer {how} "
            "(the sample order is this project's from here on)")
    return _assemble(step, epoch, samples, settings, model, optimizer, foreign.hf_rng(folder), best, text,
                     {"converted_from": "hf_trainer"})


def convert_accelerate(folder: Path, model, overrides: Overrides) -> tuple[dict, str]:
    """A ``training_state.pt`` from an ``Accelerator.save_state`` folder: optimizer moments of
    ``optimizer.bin``, the scheduler position and peak LR of ``scheduler.bin``, the RNG of
    ``random_states_0.pkl``; epoch and position from --steps-per-epoch / --samples-per-step (or a
    sibling's settings). The reply lists what accelerate does not record."""
    if model is None:
        raise ckpt.CheckpointError(f"no {ckpt.MODEL_CONFIG} to check {foreign.ACC_OPTIMIZER} against: pass "
                                   "--pretrained-model DIR (the model the run started from)")
    sched = _load_plain(folder / foreign.ACC_SCHEDULER) or {}
    step = ckpt.step_of(folder)
    if step is None:
        step = sched.get("last_epoch")
    if not isinstance(step, int):
        raise ckpt.CheckpointError(f"the step is unknown (no {foreign.ACC_SCHEDULER}, and the folder is not named "
                                   f"{ckpt.PREFIX}N): rename the folder to {ckpt.PREFIX}<step>")
    settings, source = run_settings(folder, overrides)
    if not settings.get("steps_per_epoch"):
        raise ckpt.CheckpointError("accelerate does not record the steps per epoch: pass --steps-per-epoch N "
                                   "(and --samples-per-step N for the position inside the epoch)")
    if sched.get("base_lrs"):
        settings.setdefault("learning_rate", float(sched["base_lrs"][0]))
    epoch = step // settings["steps_per_epoch"]
    samples, where = _position(step, epoch, settings)
    optimizer, how = _optimizer(_load_plain(folder / foreign.ACC_OPTIMIZER), model)
    rng_states = foreign.accelerate_rng(folder)
    lost = ([] if rng_states else ["the RNG state (random_states_0.pkl missing or refused)"])
    lost += [f"{foreign.ACC_SAMPLER}'s position (the sample order is this project's)"] if (
        folder / foreign.ACC_SAMPLER).is_file() else []
    lost += [f"the RNG of processes after the first ({len(list(folder.glob('random_states_*.pkl')))} saved)"] if (
        folder / "random_states_1.pkl").is_file() else []
    position = f"scheduler at step {sched['last_epoch']}" if "last_epoch" in sched else "no scheduler.bin"
    text = (f"built {ckpt.TRAINING_STATE} from the accelerate save_state files ({source}): step {step} ({position}), "
            f"epoch {epoch + 1}, {where}; optimizer {how}" + (f"; not recovered: {'; '.join(lost)}" if lost else ""))
    return _assemble(step, epoch, samples, settings, model, optimizer, rng_states, None, text,
                     {"converted_from": "accelerate"})


def _load_plain(path: Path) -> dict | None:
    """A Hugging Face ``optimizer.pt`` / ``scheduler.pt`` under ``weights_only``; None when absent."""
    if not path.is_file():
        return None
    try:
        return ckstate.load_training_state(path)
    except ckpt.CheckpointError as err:
        raise ckpt.CheckpointError(str(err).replace("training-state ", "")) from None


def _optimizer(saved: dict | None, model) -> tuple[dict | None, str]:
    if not saved or not saved.get("state"):
        return None, "state empty (re-warms on resume)"
    if model is None:
        return None, "state dropped: no config.json to check it against (re-warms on resume)"
    remapped, how = wt.remap_optimizer(saved, model)
    if remapped is None:
        return None, f"state dropped, it does not fit the model: {how} (re-warms on resume)"
    return remapped, f"state kept ({how} layout)"


def _assemble(step, epoch, samples, settings, model, optimizer, rng_states, best_loss, text, extra=None):
    schedule, lr, assumed = _schedule(settings, step)
    if assumed:
        text += f"; assumed the training defaults for {', '.join(assumed)} (pass them if the run used others)"
    run_state = RunState(global_step=step, best_loss=float(best_loss) if best_loss is not None else None)
    position = {"epoch": epoch, "samples_in_epoch": samples}
    for key, name in (("num_samples", "num_samples"), ("seed", "sampler_seed"),
                      ("group_by_length", "group_by_length"), ("length_group_size", "length_group_size")):
        if settings.get(key) is not None:
            position[name] = settings[key]
    hyper = {k: v for k, v in settings.items() if k not in ("num_samples", "samples_per_step")}
    state = ckstate.make_training_state(run_state, position, optimizer,
                                        scheduler_state_at(step, lr, schedule, _num_groups(model)), rng_states,
                                        hyper, {"repaired_by": "verify_and_fix_checkpoint", **(extra or {})})
    return state, text
