"""Checks of one checkpoint folder -> a ``Report``: one line per check, problems with stable codes.

Nothing here writes to disk or unpickles beyond ``weights_only`` (plus numpy arrays for legacy files,
see foreign.py). A foreign format's state is described by its importer (importers/). ``repair.py``
acts on the same report.

Here: the order of the checks, the trust check that comes first, the training state's checks and the
manifest's. The model files' checks are in ``model_checks.py``; the report itself in ``report.py``.
"""

from __future__ import annotations

from pathlib import Path

from chef_genius.checkpoint import health as cphealth
from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import trust
from chef_genius.doctor import foreign
from chef_genius.doctor import importers
from chef_genius.doctor import loadable
from chef_genius.doctor import weights as wt
from chef_genius.doctor.model_checks import PREFIX_FIX, _check_adapter, _check_files, _check_weights
from chef_genius.doctor.problems import FATAL, Problem
from chef_genius.doctor.report import Facts, Report, StateStatus  # noqa: F401 (imported from verify too)
from chef_genius.errors import printable

# SOFT: problems that leave a checkpoint resumable (training continues, with less state restored).
# FATAL: problems no repair can undo: resume from a healthy sibling instead. (``state_unreadable`` and
# ``state_corrupt`` are rebuilt from the folder name and the run's settings, the original kept.)
# Both are read from the registry of problem codes (problems.py).


def verify(folder: str | Path, deep: bool = False, manifest: bool = True) -> Report:
    """The report of ``folder``; ``manifest=False`` skips the manifest check (repair's gate before it
    writes one: every file must load first)."""
    folder = Path(folder)
    report = Report(folder)
    report.global_step = ckpt.step_of(folder)
    if not _trustworthy(report, folder):
        report.hint = healthy_sibling(folder)
        return report
    status, state, detail = foreign.read_state(folder)
    report.kind = importers.detect_kind(folder, status)
    report.facts.state_status, report.facts.state = status, state
    if ckpt.is_adapter(folder):  # a LoRA checkpoint: the adapter and its base instead of the model
        _check_adapter(report, folder, deep)
        model = None
    else:
        _check_files(report, folder)
        model = _check_weights(report, folder, deep)
    report.facts.model = model
    try:
        _check_state(report, folder, status, state, detail, model)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:  # plain data, wrong shape
        report.fail(
            Problem.STATE_UNREADABLE,
            f"{ckpt.TRAINING_STATE} holds values of the wrong kind ({type(err).__name__}: {printable(str(err), 80)})",
        )
    importer = importers.importer_for(report.kind)
    if importer is not None:
        importer.check_files(report, folder)
    if manifest:
        _check_manifest(report, folder, deep)
        _prefix_over_changed_weights(report)
    if report.codes() & FATAL:
        report.hint = healthy_sibling(folder)
    return report


def _trustworthy(report: Report, folder: Path) -> bool:
    """No link, device or folder-for-a-file anywhere in the checkpoint (nothing else is read if so)."""
    if trust.is_link(folder):
        report.fail(Problem.UNTRUSTED_ENTRY, f"{folder.name} is a symbolic link: never followed (give the real folder)")
        return False
    odd = trust.odd_entries(folder, FILE_NAMES)
    for text in odd:
        report.fail(Problem.UNTRUSTED_ENTRY, text + "; the checkpoint is left alone")
    return not odd


# ---------------------------------------------------------------------------------------------

FILE_NAMES = (
    *ckpt.REQUIRED_FILES,
    *ckpt.ADAPTER_REQUIRED_FILES,
    ckpt.WEIGHTS_INDEX,
    ckpt.WEIGHTS_BIN,
    ckpt.MANIFEST,
    ckpt.GENERATION_CONFIG,
    *ckpt.TOKENIZER_FILES,
    *importers.FILES,
)


def _check_state(report: Report, folder: Path, status: str, state, detail, model) -> None:
    name = ckpt.TRAINING_STATE
    importer = importers.importer_for(report.kind)
    if importer is not None and importer.describe(report, folder, status, state):
        return  # a foreign format: its importer says what --fix builds from it
    if status == "missing":
        report.fail(Problem.STATE_MISSING, f"{name} is missing")
        return
    if status in ("unsafe", "unreadable"):
        report.fail(Problem.STATE_UNSAFE if status == "unsafe" else Problem.STATE_UNREADABLE, f"{name}: {detail}")
        return
    report.ok(f"{name} loads with weights_only=True")
    step, epoch = ckstate.saved_step(state), ckstate.saved_epoch(state)
    if not (isinstance(step, int) and isinstance(epoch, int)) or isinstance(step, bool):
        report.fail(Problem.STATE_UNREADABLE, f"{name} holds a global_step / epoch that are not integers")
        return
    report.global_step, report.epoch = step, epoch
    folder_step = ckpt.step_of(folder)
    if folder_step is not None and folder_step != step:
        report.fail(Problem.STEP_MISMATCH, f"{name} is at step {step} but the folder is named {folder.name}")
    else:
        report.ok(f"global_step {step} matches the folder name")
    _check_optimizer(report, state, model)
    sched = state.get("scheduler_state_dict")
    sched = sched if isinstance(sched, dict) else {}
    if sched.get("last_epoch") != step:
        report.fail(Problem.SCHEDULER_MISMATCH, f"scheduler is at step {sched.get('last_epoch')}, the run at {step}")
    else:
        report.ok(f"scheduler position {step} matches global_step")
    if not ckstate.rank0_rng(state):
        report.fail(Problem.RNG_MISSING, "no RNG state: dropout and shuffling draw fresh seeds on resume", "warn")
    elif ckstate.REBUILT_RNG in ckstate.rebuilt_facts(state):
        report.fail(
            Problem.RNG_REBUILT,
            "RNG state rebuilt from the run's seed and the step: dropout and shuffling draw new streams on resume",
            "warn",
        )
    _check_health(report, folder, state)


def _check_health(report: Report, folder: Path, state: dict) -> None:
    """The checkpoint judged by its numbers: its health record, or (none: an older checkpoint) the numbers
    themselves, never assumed finite (``checkpoint/health.py``)."""
    record = ckstate.recorded_health(state)
    if record is not None:
        if not record["weights_finite"]:
            report.fail(Problem.WEIGHTS_NONFINITE, "its weights held NaN or Inf when it was saved (health record)")
        if not record["moments_finite"]:
            report.fail(
                Problem.OPTIMIZER_NONFINITE, "its optimizer moments held NaN or Inf when it was saved (health record)"
            )
        if record["weights_finite"] and record["moments_finite"]:
            report.ok("health record: weights and optimizer moments finite when saved")
        return
    if not report.facts.weights_read and not report.codes() & FATAL:  # --deep read them already
        try:
            bad = cphealth.nonfinite_weights(folder)
        except Exception as err:  # safetensors' own checks go further than the header's
            report.fail(Problem.WEIGHTS_UNREADABLE, loadable.describe(folder.name, err))
            return
        if bad:
            report.fail(
                Problem.WEIGHTS_NONFINITE,
                f"no health record, so the numbers were read: {len(bad)} tensors hold NaN or Inf (e.g. {bad[0]})",
            )
    if not cphealth.moments_finite(state):
        report.fail(
            Problem.OPTIMIZER_NONFINITE, "no health record, so the numbers were read: optimizer moments hold NaN or Inf"
        )
    if not report.codes() & {Problem.WEIGHTS_NONFINITE, Problem.OPTIMIZER_NONFINITE}:
        report.ok("no health record (an older checkpoint): its weights and optimizer moments were read, all finite")


def _check_optimizer(report: Report, state: dict, model) -> None:
    optimizer = state.get("optimizer_state_dict") or {}
    if state.get("optimizer_state_empty") or not optimizer.get("state"):
        report.fail(
            Problem.OPTIMIZER_EMPTY,
            "optimizer state is empty: Adam moments restart and the learning rate "
            "re-warms over --optimizer-rewarmup-steps on resume",
            "warn",
        )
        return
    if model is None:
        _check_adapter_optimizer(report, optimizer)
        return
    shapes, _ = wt.expected_tensors(model)
    problem = wt.optimizer_problem(optimizer, wt.our_layout(model), shapes)
    if problem:
        report.fail(Problem.OPTIMIZER_MISMATCH, f"optimizer state does not fit the model: {problem}")
    else:
        report.ok(f"optimizer state covers all {sum(map(len, wt.our_layout(model)))} trainable parameters")


def _check_adapter_optimizer(report: Report, optimizer: dict) -> None:
    """A LoRA checkpoint's optimizer: one state per adapter tensor, each moment of that tensor's shape."""
    header = report.facts.adapter_header
    if header is None:
        return
    want = sorted(tuple(e["shape"]) for n, e in header.items() if n != "__metadata__")
    got = sorted(
        tuple(m["exp_avg"].shape)
        for m in optimizer["state"].values()
        if isinstance(m, dict) and hasattr(m.get("exp_avg"), "shape")
    )
    if got and got != want:  # Adafactor keeps no exp_avg: its state is not compared here
        report.fail(
            Problem.OPTIMIZER_MISMATCH,
            f"optimizer state does not fit the adapter: {len(got)} moments for {len(want)} adapter tensors",
        )
    else:
        report.ok(f"optimizer state over the adapter ({len(optimizer['state'])} tensors)")


def _check_manifest(report: Report, folder: Path, deep: bool) -> None:
    """A file whose size or sha256 differs from the manifest is damage, never a stale manifest."""
    problems = ckmanifest.manifest_findings(folder, verify_hashes=deep)
    if not problems:
        report.ok(f"{ckpt.MANIFEST} verifies" + (" (sha256 of every file)" if deep else " (sizes)"))
        return
    for problem in (p for p in problems if p.kind == "changed"):
        code = (
            Problem.WEIGHTS_CORRUPT
            if ckpt.is_weights_file(problem.name or "")
            else Problem.STATE_CORRUPT
            if problem.name == ckpt.TRAINING_STATE
            else Problem.FILE_CORRUPT
        )
        report.fail(code, f"{problem}: the file changed after it was saved (bit rot, a bad copy or tampering)")
    invalid = [p for p in problems if p.kind != "changed"]
    if invalid:
        report.fail(Problem.MANIFEST_INVALID, f"{ckpt.MANIFEST}: {invalid[0]}")


PREFIX_BLOCKED = (
    "; --fix leaves it, because the weights changed after the manifest sealed them (the prefixed file "
    "is not the one the run saved); if you trust the file as it is, --fix --accept-changed-weights "
    "strips the prefix, keeps the original in backup-*/ and re-seals, else resume from a sibling"
)


def _prefix_over_changed_weights(report: Report) -> None:
    """Prefixed weights that the manifest did not seal: a plain --fix does not bless them, so the
    prefix line must not promise that it removes the prefix; it says why, and what will."""
    if not {Problem.WEIGHTS_PREFIXED, Problem.WEIGHTS_CORRUPT} <= report.codes():
        return
    for problem in report.problems:
        if problem["code"] == Problem.WEIGHTS_PREFIXED and problem["message"].endswith(PREFIX_FIX):
            old = problem["message"]
            problem["message"] = old[: -len(PREFIX_FIX)] + PREFIX_BLOCKED
            report.lines = [(status, problem["message"] if text == old else text) for status, text in report.lines]


def healthy_sibling(folder: Path) -> str | None:
    """The newest other checkpoint of the run that a resume would accept (the rules of ``latest``)."""
    for path in reversed(ckpt.list_checkpoints(folder.parent)):
        if path.name != folder.name and ckmanifest.usability_problem(path) is None:
            return str(path)
    return None
