"""Checks of one checkpoint folder -> a ``Report``: one line per check, problems with stable codes.

Nothing here writes to disk or unpickles beyond ``weights_only`` (plus numpy arrays for legacy files,
see foreign.py). A foreign format's state is described by its importer (importers/). ``repair.py``
acts on the same report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chef_genius.checkpoint import health as cphealth
from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import records as ckrecords
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import trust
from chef_genius.checkpoint import weight_files
from chef_genius.doctor import foreign
from chef_genius.doctor import importers
from chef_genius.doctor import loadable
from chef_genius.doctor import weights as wt
from chef_genius.doctor.problems import FATAL, SOFT, Problem
from chef_genius.errors import printable
from chef_genius.model import wrappers

# SOFT: problems that leave a checkpoint resumable (training continues, with less state restored).
# FATAL: problems no repair can undo: resume from a healthy sibling instead. (``state_unreadable`` and
# ``state_corrupt`` are rebuilt from the folder name and the run's settings, the original kept.)
# Both are read from the registry of problem codes (problems.py).


StateStatus = foreign.StateStatus


@dataclass
class Facts:
    """What the checks found and repair acts on (never printed: ``Report.to_json`` leaves it out)."""

    state_status: StateStatus | None = None  # None: the checkpoint was not read (an untrusted entry)
    state: dict | None = None  # training_state.pt's values (ours or legacy)
    model: Any = None  # the meta-device model of config.json, when it fits the weights
    header: dict | None = None  # weight name -> safetensors header entry (every shard)
    weights_layout: str | None = None  # single | sharded | bin
    weight_files: list[Path] = field(default_factory=list)
    adapter_header: dict | None = None  # a LoRA checkpoint's adapter header
    unfixed: list[str] = field(default_factory=list)  # repairs --fix needed but could not make, and why
    weights_read: bool = False  # every weight tensor was read (--deep): no second read for NaN


@dataclass
class Report:
    path: Path | str  # a str: a mirror's checkpoint, named by its URL
    kind: str = foreign.UNKNOWN
    global_step: int | None = None
    epoch: int | None = None
    problems: list[dict] = field(default_factory=list)
    repairs: list[dict] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)
    hint: str | None = None
    facts: Facts = field(default_factory=Facts)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def resumable(self) -> bool:
        return self.kind == foreign.CHEF and all(p["code"] in SOFT for p in self.problems)

    def ok(self, text: str) -> None:
        self.lines.append(("ok", text))

    def fail(self, code: Problem, text: str, status: str = "FAIL") -> None:
        # Problem(x) looks a member up by value; mypy reads it as a call of the members' constructor
        self.problems.append({"code": Problem(code).value, "message": text})  # type: ignore[call-arg]
        self.lines.append((status, text))

    def repaired(self, code: str, text: str) -> None:
        self.repairs.append({"code": code, "message": text})

    def codes(self) -> set[Problem]:
        return {Problem(p["code"]) for p in self.problems}  # type: ignore[call-arg]  # lookup by value

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "valid": self.valid,
            "resumable": self.resumable,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "problems": self.problems,
            "repairs": self.repairs,
            **({"resume_instead": self.hint} if self.hint else {}),
        }

    def text(self) -> str:
        out = [f"{self.path} ({self.kind})"]
        out += [f"  [{status}] {text}" for status, text in self.lines]
        out += [f"  [fixed] {r['message']}" for r in self.repairs]
        verdict = (
            "complete and resumable with full state"
            if self.valid
            else "resumable, with less state (see above)"
            if self.resumable
            else "NOT resumable"
        )
        out.append(
            f"  => {verdict}" + (f"; resume from {self.hint} instead" if self.hint and not self.resumable else "")
        )
        return "\n".join(out)


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


def _check_files(report: Report, folder: Path) -> None:
    """Present, and each loads the way the trainer loads it (a damaged file is a problem, not an omission)."""
    before = len(report.problems)
    if not (folder / ckpt.MODEL_CONFIG).is_file():
        report.fail(Problem.CONFIG_MISSING, f"{ckpt.MODEL_CONFIG} is missing")
    else:
        _loads(report, Problem.CONFIG_UNREADABLE, loadable.config_problem(folder))
    if not (folder / ckpt.GENERATION_CONFIG).is_file():
        report.fail(Problem.GENERATION_CONFIG_MISSING, f"{ckpt.GENERATION_CONFIG} is missing", "warn")
    else:
        _loads(report, Problem.GENERATION_CONFIG_UNREADABLE, loadable.generation_config_problem(folder))
    if not any((folder / name).is_file() for name in ckpt.TOKENIZER_VOCAB_FILES):
        report.fail(Problem.TOKENIZER_MISSING, "tokenizer files are missing (tokenizer.json / spiece.model)")
    else:
        _loads(report, Problem.TOKENIZER_UNREADABLE, loadable.tokenizer_problem(folder))
    if len(report.problems) == before:
        report.ok("config, generation config and tokenizer load")


def _check_adapter(report: Report, folder: Path, deep: bool) -> None:
    """A LoRA checkpoint: the adapter's header and config agree, the base it belongs to is recorded, the
    tokenizer loads (there is no model config: the base's comes from --pretrained-model)."""
    try:
        header = trust.read_safetensors_header(folder / ckpt.ADAPTER_WEIGHTS)
    except (trust.Untrusted, ValueError, OSError) as err:
        report.fail(Problem.ADAPTER_UNREADABLE, f"{ckpt.ADAPTER_WEIGHTS}: {err}")
        header = None
    config = None
    try:
        config = trust.read_json(folder / ckpt.ADAPTER_CONFIG)
    except (trust.Untrusted, OSError) as err:
        report.fail(Problem.ADAPTER_CONFIG_UNREADABLE, f"{ckpt.ADAPTER_CONFIG}: {err}")
    if config is not None and not (isinstance(config, dict) and isinstance(config.get("r"), int)):
        report.fail(Problem.ADAPTER_CONFIG_UNREADABLE, f"{ckpt.ADAPTER_CONFIG} holds no LoRA config (no integer r)")
        config = None
    if header is not None:
        names = [n for n in header if n != "__metadata__"]
        ranks = {header[n]["shape"][0] for n in names if "lora_A" in n and header[n].get("shape")}
        if not names or not all("lora_A" in n or "lora_B" in n for n in names):
            report.fail(
                Problem.ADAPTER_UNREADABLE, f"{ckpt.ADAPTER_WEIGHTS} holds tensors that are not LoRA A / B matrices"
            )
        elif config is not None and ranks != {config["r"]}:
            report.fail(
                Problem.ADAPTER_UNREADABLE,
                f"{ckpt.ADAPTER_WEIGHTS} has rank {sorted(ranks)}, {ckpt.ADAPTER_CONFIG} says r={config['r']}",
            )
        else:
            report.ok(f"adapter readable ({len(names)} tensors, r={config['r'] if config else '?'})")
            report.facts.adapter_header = header
            if deep:
                bad = wt.nonfinite_tensors([folder / ckpt.ADAPTER_WEIGHTS])
                report.facts.weights_read = True
                if bad:
                    report.fail(
                        Problem.WEIGHTS_NONFINITE, f"{len(bad)} adapter tensors hold NaN or Inf (e.g. {bad[0]})"
                    )
                else:
                    report.ok("every adapter tensor read, all values finite")
    base = ckrecords.read_base(folder)
    if base is None:
        report.fail(
            Problem.BASE_RECORD_MISSING,
            f"{ckpt.BASE_RECORD} is missing or malformed: the base model the "
            "adapter belongs to, and its fingerprint, are unknown",
        )
    else:
        report.ok(
            f"base model recorded: {printable(base['pretrained_model'], 120)} (weights' sha256 {base['sha256'][:12]})"
        )
    if not any((folder / name).is_file() for name in ckpt.TOKENIZER_VOCAB_FILES):
        report.fail(Problem.TOKENIZER_MISSING, "tokenizer files are missing (tokenizer.json / spiece.model)")
    else:
        problem = loadable.tokenizer_problem(folder)
        _loads(report, Problem.TOKENIZER_UNREADABLE, problem)
        if not problem:
            report.ok("tokenizer loads")


def _loads(report: Report, code: Problem, problem: str | None) -> None:
    if problem:
        report.fail(code, problem)


def _check_weights(report: Report, folder: Path, deep: bool):
    try:
        layout, header, files = weight_files.read_weights(folder)
    except weight_files.MissingShard as err:
        report.fail(Problem.WEIGHTS_MISSING, str(err))
        return None
    except (ValueError, OSError) as err:  # trust.Untrusted too: a link, a FIFO, a hostile header
        report.fail(Problem.WEIGHTS_UNREADABLE, str(err))
        return None
    if layout is None:
        report.fail(
            Problem.WEIGHTS_MISSING,
            f"{ckpt.WEIGHTS} is missing (nor sharded weights with {ckpt.WEIGHTS_INDEX}, nor {ckpt.WEIGHTS_BIN})",
        )
        return None
    report.facts.header, report.facts.weights_layout, report.facts.weight_files = header, layout, files
    where = {"single": "", "sharded": f" in {len(files)} shards", "bin": f" in {ckpt.WEIGHTS_BIN}"}[layout]
    report.ok(f"model weights readable ({len(header)} tensors{where})")
    if layout == "bin":
        report.fail(
            Problem.WEIGHTS_BIN,
            f"weights are in {ckpt.WEIGHTS_BIN} (read with weights_only=True); --fix "
            f"converts them to {ckpt.WEIGHTS}, keeping the original",
            "warn",
        )
    bad = wrappers.wrapped(header)
    if bad:
        report.fail(
            Problem.WEIGHTS_PREFIXED,
            f"{len(bad)} weight names carry a _orig_mod./module. prefix (e.g. {bad[0]}){PREFIX_FIX}",
        )
    shown = files[0].name if len(files) == 1 else f"the {len(files)} weight shards"
    model = None
    if (folder / ckpt.MODEL_CONFIG).is_file() and Problem.CONFIG_UNREADABLE not in report.codes():
        too_big = loadable.layers_problem(folder, header)
        if too_big:  # never build thousands of layers a config claims without the weights to match
            report.fail(Problem.WEIGHTS_MISMATCH, f"weights do not match {ckpt.MODEL_CONFIG}: {too_big}")
            return None
        try:
            model = wt.meta_model(folder, None, header)
        except Exception as err:  # reading lm_head / shared to decide on the tie: unreadable data
            report.fail(Problem.WEIGHTS_UNREADABLE, loadable.describe(shown, err))
            return None
    if model is not None:
        _check_shapes(report, {wrappers.strip(k): dict(v, name=k) for k, v in header.items()}, model, deep)
    if deep and not report.codes() & {Problem.WEIGHTS_MISMATCH, Problem.LM_HEAD_MISSING, Problem.WEIGHTS_UNREADABLE}:
        try:  # fatal already: no full read
            nonfinite = wt.nonfinite_tensors(files)
        except Exception as err:  # safetensors' own checks go further than the header's
            report.fail(Problem.WEIGHTS_UNREADABLE, loadable.describe(shown, err))
            return model
        report.facts.weights_read = True
        if nonfinite:
            report.fail(Problem.WEIGHTS_NONFINITE, f"{len(nonfinite)} tensors hold NaN or Inf (e.g. {nonfinite[0]})")
        else:
            report.ok(
                "every tensor read"
                + (f" in each of the {len(files)} shards" if layout == "sharded" else "")
                + ", all values finite"
            )
    return model


def _check_shapes(report: Report, header: dict, model, deep: bool) -> None:
    shapes, ids = wt.expected_tensors(model)
    unknown = [n for n in header if n not in shapes]
    wrong = [n for n in header if n in shapes and tuple(header[n]["shape"]) != shapes[n]]
    present_ids = {ids.get(n) for n in header}
    missing = [n for n in shapes if n not in header and ids.get(n) not in present_ids]
    if unknown or wrong or missing:
        parts = [
            f"{len(x)} {what} (e.g. {x[0]})"
            for x, what in ((missing, "missing"), (wrong, "with the wrong shape"), (unknown, "unknown"))
            if x
        ]
        code = Problem.LM_HEAD_MISSING if missing == ["lm_head.weight"] and not wrong else Problem.WEIGHTS_MISMATCH
        report.fail(code, "weights do not match config.json: " + ", ".join(parts))
        return
    report.ok(f"weight shapes match {ckpt.MODEL_CONFIG}")
    tied = [n for n in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight") if n in header]
    if tied and "shared.weight" in header and deep:
        try:
            equal = all(wt.tensors_equal(header, "shared.weight", n) for n in tied)
        except Exception as err:
            report.fail(Problem.WEIGHTS_UNREADABLE, loadable.describe(header["shared.weight"]["file"].name, err))
            return
        if not equal:
            report.fail(
                Problem.EMBEDDINGS_INCONSISTENT, "encoder/decoder embed_tokens differ from the shared embedding"
            )
            return
    report.ok("shared embeddings consistent" + ("" if "lm_head.weight" in header else " (lm_head tied)"))


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


PREFIX_FIX = "; --fix removes it"
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
