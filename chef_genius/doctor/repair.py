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
from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import disk, trust
from chef_genius.checkpoint import weight_files
from chef_genius.doctor import foreign
from chef_genius.doctor import importers
from chef_genius.doctor import loadable
from chef_genius.doctor import state_builder as sb
from chef_genius.doctor import weights as wt
from chef_genius.doctor.problems import FATAL, SOFT, Problem
from chef_genius.doctor.repairs import Repair
from chef_genius.doctor.state_builder import Overrides
from chef_genius.doctor.verify import Report, verify
from chef_genius.errors import printable
from chef_genius.model import wrappers
from chef_genius.train import rng
from chef_genius.train.config import TrainConfig

log = logging.getLogger(__name__)

# Problems a sibling's byte-identical copy (by the manifest's sha256) can undo.
RESTORABLE = {
    Problem.FILE_CORRUPT,
    Problem.MANIFEST_INVALID,
    Problem.CONFIG_MISSING,
    Problem.CONFIG_UNREADABLE,
    Problem.TOKENIZER_MISSING,
    Problem.TOKENIZER_UNREADABLE,
    Problem.GENERATION_CONFIG_MISSING,
    Problem.GENERATION_CONFIG_UNREADABLE,
}
COPYABLE = (ckpt.MODEL_CONFIG, ckpt.GENERATION_CONFIG, *ckpt.TOKENIZER_FILES)


class Fixer:
    def __init__(
        self,
        folder: Path,
        backup: bool = True,
        dry_run: bool = False,
        overrides: Overrides | None = None,
        pretrained: str | Path | None = None,
        accept_changed_weights: bool = False,
    ):
        self.folder = Path(folder)
        self.accept_changed_weights = accept_changed_weights  # weights the manifest did not seal, taken as they are
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
        if (
            codes & RESTORABLE
            and not codes & {Problem.UNTRUSTED_ENTRY, Problem.STATE_UNSAFE}
            and self._restore_from_siblings()
            and not self.dry_run
        ):
            before = verify(self.folder, deep=True)
        codes = before.codes()
        if (
            self.accept_changed_weights
            and Problem.WEIGHTS_CORRUPT in codes
            and not codes & (FATAL - {Problem.WEIGHTS_CORRUPT})
        ):
            codes = self._accept_changed_weights(before, codes)
        if not codes or codes & (FATAL - {Problem.STATE_UNREADABLE}):
            before.repairs = self.repairs
            return before
        try:
            self._repair(before, codes)
        except Exception as err:  # read-only mount, permissions, full disk: each write is atomic, so
            if not (isinstance(err, OSError) or disk.disk_full(err)):
                raise
            self.unfixed.append(
                f"stopped repairing: {os_sentence(err)}; every file is either its old or "
                "its new version, none half-written"
            )
        after = verify(self.folder, deep=True) if not self.dry_run else before
        after.repairs = self.repairs
        after.lines += [("FAIL", text) for text in self.unfixed]
        after.facts.unfixed = list(self.unfixed)
        if self.unfixed and after.valid:
            after.fail(Problem.REPAIR_INCOMPLETE, self.unfixed[0])
        return after

    def _accept_changed_weights(self, report: Report, codes: set[Problem]) -> set[Problem]:
        """``--accept-changed-weights``: weights that changed after the manifest sealed them, but read in
        full, finite and of the config's shapes, are taken as they are (the prefix stripped after); the
        files as found are kept in the backup folder, even with --no-backup, and the manifest re-sealed."""
        files = report.facts.weight_files or []
        if not self.dry_run:
            for path in files:
                self.keep(path, always=True)
        names = ", ".join(p.name for p in files)
        self.note(
            Repair.WEIGHTS_ACCEPTED,
            f"took {names} as it is now, not as the manifest sealed it "
            "(--accept-changed-weights; the file as found kept in the backup folder)",
        )
        return codes - {Problem.WEIGHTS_CORRUPT}

    def _restore_from_siblings(self) -> bool:
        """Damaged or lost files the manifest lists (not the weights, not the state) replaced by a
        sibling's copy whose size and sha256 are the manifest's: the original bytes, proven."""
        manifest = ckmanifest.read_manifest(self.folder)
        if (
            manifest is None
            or not manifest.get("complete")
            or not all(trust.confined(self.folder, n) for n in manifest["files"])
        ):
            return False
        restored = False
        for name, entry in manifest["files"].items():
            path = self.folder / name
            if ckpt.is_weights_file(name) or name == ckpt.TRAINING_STATE or "/" in name or not isinstance(entry, dict):
                continue
            if (
                trust.regular_file(path)
                and path.stat().st_size == entry.get("size")
                and ckfiles.sha256_file(path) == entry.get("sha256")
            ):
                continue
            source = next(
                (
                    s / name
                    for s in sb.candidate_folders(self.folder)
                    if trust.regular_file(s / name)
                    and (s / name).stat().st_size == entry.get("size")
                    and ckfiles.sha256_file(s / name) == entry.get("sha256")
                ),
                None,
            )
            if source is None:
                continue
            try:
                if not self.dry_run:
                    self.keep(path, always=True)  # the damaged original, even with --no-backup
                    ckfiles.atomic_write_bytes(path, source.read_bytes())
            except OSError as err:
                self.unfixed.append(f"could not restore {name}: {os_sentence(err)}")
                return restored
            self.note(Repair.FILE_RESTORED, f"restored {name} from {source.parent} (its sha256 is the manifest's)")
            restored = True
        return restored

    def _repair(self, before: Report, codes: set[Problem]) -> None:
        if codes & {Problem.WEIGHTS_PREFIXED, Problem.WEIGHTS_BIN}:
            self._rewrite_weights(before)
        for code, names in (
            (Problem.CONFIG_MISSING, (ckpt.MODEL_CONFIG,)),
            (Problem.GENERATION_CONFIG_MISSING, (ckpt.GENERATION_CONFIG,)),
            (Problem.TOKENIZER_MISSING, ckpt.TOKENIZER_FILES),
        ):
            if code in codes:
                self._copy_from_run(names)
        model = before.facts.model or wt.meta_model(self.folder, None, before.facts.header)
        if codes & {
            Problem.STATE_MISSING,
            Problem.STATE_UNREADABLE,
            Problem.STATE_CORRUPT,
            Problem.STATE_LEGACY,
            Problem.HF_TRAINER_STATE,
            Problem.ACCELERATE_STATE,
        }:
            self._write_state(before, model)
        if not (self.repairs or Problem.MANIFEST_INVALID in codes):
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

    def note(self, code: Repair, text: str) -> None:
        self.repairs.append({"code": code.value, "message": ("would: " if self.dry_run else "") + text})

    def keep(self, path: Path, always: bool = False) -> None:
        """Copy ``path`` into the backup folder before it changes (``always``: even with --no-backup)."""
        if not (self.backup or always) or self.dry_run or not path.is_file():
            return
        if self.backup_dir is None:
            self.backup_dir = self.folder / f"backup-{time.strftime('%Y%m%d-%H%M%S')}"
            self.backup_dir.mkdir(exist_ok=True)
            self.note(Repair.BACKUP, f"originals kept in {self.backup_dir.name}/")
        shutil.copy2(path, self.backup_dir / path.name)

    # -----------------------------------------------------------------------------------------
    def _rewrite_weights(self, report: Report) -> None:
        """Wrapper prefixes removed from every weight name (each shard and the index), and a
        ``pytorch_model.bin`` converted to ``model.safetensors``; the .bin is moved to the backup
        folder even with --no-backup (the original of a conversion is always kept)."""
        layout, files = report.facts.weights_layout, report.facts.weight_files
        assert layout is not None  # verify found the weights' layout when it found their names or .bin
        if not self.dry_run:
            for name, data in wt.stripped_files(self.folder, layout, files).items():
                self.keep(self.folder / name)
                ckfiles.atomic_write_bytes(self.folder / name, data)
            if layout == "bin":
                self.keep(files[0], always=True)
                files[0].unlink()
        if Problem.WEIGHTS_PREFIXED in report.codes():
            where = {
                "single": ckpt.WEIGHTS,
                "sharded": f"{len(files)} shards and {ckpt.WEIGHTS_INDEX}",
                "bin": ckpt.WEIGHTS_BIN,
            }[layout]
            self.note(Repair.PREFIXES_STRIPPED, f"removed _orig_mod./module. prefixes from {where}")
        if layout == "bin":
            self.note(
                Repair.WEIGHTS_CONVERTED,
                f"converted {ckpt.WEIGHTS_BIN} to {ckpt.WEIGHTS} (same tensors; the "
                "original moved to the backup folder)",
            )

    def _copy_from_run(self, names) -> None:
        for source in ([self.pretrained] if self.pretrained else []) + sb.candidate_folders(self.folder):
            found = [n for n in names if trust.regular_file(source / n)]
            if not found or not _same_model(self.folder, source):
                continue
            for name in found:
                if not self.dry_run:
                    ckfiles.atomic_write_bytes(self.folder / name, (source / name).read_bytes())
            self.note(Repair.FILE_COPIED, f"copied {', '.join(found)} from {source}")
            return

    def _write_state(self, report: Report, model) -> None:
        importer = importers.importer_for(report.kind)
        try:
            if importer is not None and importer.converts(report.facts.state_status):
                state, text = importer.convert(self.folder, report, model, self.overrides)
                code = importer.converted
            else:
                state, text = rebuild_state(self.folder, model, self.overrides)
                code = Repair.STATE_REBUILT
        except ckpt.CheckpointError as err:
            self.unfixed.append(f"cannot build {ckpt.TRAINING_STATE}: {err}")
            return
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:  # hostile plain values
            self.unfixed.append(
                f"cannot build {ckpt.TRAINING_STATE}: the old state or trainer_state.json holds "
                f"values of the wrong kind ({type(err).__name__}: {printable(str(err), 80)})"
            )
            return
        if not self.dry_run:
            # a state this tool cannot read is kept even with --no-backup: it may be readable elsewhere
            damaged = report.facts.state_status == "unreadable" or Problem.STATE_CORRUPT in report.codes()
            self.keep(self.folder / ckpt.TRAINING_STATE, always=damaged)
            ckfiles.atomic_torch_save(self.folder / ckpt.TRAINING_STATE, state)
        self.note(code, text)

    def _rebuild_manifest(self) -> None:
        step = ckpt.step_of(self.folder)
        if not self.dry_run:
            if step is None:
                step = int(ckstate.saved_step(ckstate.load_training_state(self.folder)))
            self.keep(self.folder / ckpt.MANIFEST)
            ckfiles.atomic_write_json(self.folder / ckpt.MANIFEST, ckmanifest.build_manifest(self.folder, step))
        self.note(Repair.MANIFEST_REBUILT, f"rebuilt {ckpt.MANIFEST}")


def fix(
    folder: str | Path,
    backup: bool = True,
    dry_run: bool = False,
    overrides: Overrides | None = None,
    pretrained: str | Path | None = None,
    accept_changed_weights: bool = False,
) -> Report:
    return Fixer(Path(folder), backup, dry_run, overrides, pretrained, accept_changed_weights).run()


# ---------------------------------------------------------------------------------------------
# where the run's settings and files come from


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


def rebuild_state(folder: Path, model, overrides: Overrides) -> tuple[dict, str]:
    """A ``training_state.pt`` for a checkpoint that lost it: position and LR exact, optimizer empty."""
    settings, source = sb.run_settings(folder, overrides)
    step = ckpt.step_of(folder)
    if step is None:
        raise ckpt.CheckpointError(f"the step is unknown (the folder is not named {ckpt.PREFIX}N)")
    if not settings.get("steps_per_epoch"):
        raise ckpt.CheckpointError(
            "the steps per epoch are unknown (no sibling checkpoint with saved settings): pass --steps-per-epoch N"
        )
    epoch = step // settings["steps_per_epoch"]
    samples, where = sb.position_in_epoch(step, epoch, settings)
    seed = settings.get("seed", TrainConfig().seed)
    return sb.assemble(
        step,
        epoch,
        samples,
        settings,
        model,
        None,
        seeded_rng(seed, step),
        None,
        f"rebuilt {ckpt.TRAINING_STATE} from {source}: step {step}, epoch {epoch + 1}, {where}; "
        "optimizer state empty (re-warms on resume); RNG seeded from the run's seed and the step",
        {ckstate.REBUILT: ["optimizer_state_dict", ckstate.REBUILT_RNG, "best_loss"]},
    )


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
