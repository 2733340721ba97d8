"""Checks of one checkpoint folder -> a ``Report``: one line per check, problems with stable codes.

Nothing here writes to disk or unpickles beyond ``weights_only`` (plus numpy arrays for legacy files,
see foreign.py). ``repair.py`` acts on the same report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import records as ckrecords
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import trust
from chef_genius.checkpoint import weight_files
from chef_genius.doctor import foreign
from chef_genius.doctor import loadable
from chef_genius.doctor import weights as wt
from chef_genius.errors import printable
from chef_genius.model import wrappers

# Problems that leave a checkpoint resumable (training continues, with less state restored).
SOFT = {"optimizer_empty", "rng_missing", "rng_rebuilt", "generation_config_missing", "weights_bin"}
# Problems no repair can undo: resume from a healthy sibling instead. (``state_unreadable`` and
# ``state_corrupt`` are rebuilt from the folder name and the run's settings, the original kept.)
FATAL = {"weights_unreadable", "weights_corrupt", "weights_nonfinite", "weights_mismatch", "state_unsafe",
         "state_unreadable", "lm_head_missing", "weights_missing", "file_corrupt", "untrusted_entry",
         "config_unreadable", "generation_config_unreadable", "tokenizer_unreadable", "rng_unreadable",
         "check_failed", "adapter_unreadable", "adapter_config_unreadable", "base_record_missing"}


@dataclass
class Report:
    path: Path
    kind: str = foreign.UNKNOWN
    global_step: int | None = None
    epoch: int | None = None
    problems: list[dict] = field(default_factory=list)
    repairs: list[dict] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)
    hint: str | None = None
    facts: dict = field(default_factory=dict)  # what repair needs: state, header, model...

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def resumable(self) -> bool:
        return self.kind == foreign.CHEF and all(p["code"] in SOFT for p in self.problems)

    def ok(self, text: str) -> None:
        self.lines.append(("ok", text))

    def fail(self, code: str, text: str, status: str = "FAIL") -> None:
        self.problems.append({"code": code, "message": text})
        self.lines.append((status, text))

    def repaired(self, code: str, text: str) -> None:
        self.repairs.append({"code": code, "message": text})

    def codes(self) -> set[str]:
        return {p["code"] for p in self.problems}

    def to_json(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "valid": self.valid, "resumable": self.resumable,
                "global_step": self.global_step, "epoch": self.epoch, "problems": self.problems,
                "repairs": self.repairs, **({"resume_instead": self.hint} if self.hint else {})}

    def text(self) -> str:
        out = [f"{self.path} ({self.kind})"]
        out += [f"  [{status}] {text}" for status, text in self.lines]
        out += [f"  [fixed] {r['message']}" for r in self.repairs]
        verdict = ("complete and resumable with full state" if self.valid else
                   "resumable, with less state (see above)" if self.resumable else "NOT resumable")
        out.append(f"  => {verdict}" + (f"; resume from {self.hint} instead" if self.hint and not self.resumable
                                        else ""))
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
    report.kind = foreign.detect_kind(folder, status)
    report.facts.update(state_status=status, state=state)
    if ckpt.is_adapter(folder):  # a LoRA checkpoint: the adapter and its base instead of the model
        _check_adapter(report, folder, deep)
        model = None
    else:
        _check_files(report, folder)
        model = _check_weights(report, folder, deep)
    report.facts["model"] = model
    try:
        _check_state(report, folder, status, state, detail, model)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:  # plain data, wrong shape
        report.fail("state_unreadable", f"{ckpt.TRAINING_STATE} holds values of the wrong kind ({type(err).__name__}: "
                                        f"{printable(str(err), 80)})")
    if report.kind == foreign.HF:
        _check_hf_files(report, folder)
    if manifest:
        _check_manifest(report, folder, deep)
    if report.codes() & FATAL:
        report.hint = healthy_sibling(folder)
    return report


def _trustworthy(report: Report, folder: Path) -> bool:
    """No link, device or folder-for-a-file anywhere in the checkpoint (nothing else is read if so)."""
    if trust.is_link(folder):
        report.fail("untrusted_entry", f"{folder.name} is a symbolic link: never followed (give the real folder)")
        return False
    odd = trust.odd_entries(folder, FILE_NAMES)
    for text in odd:
        report.fail("untrusted_entry", text + "; the checkpoint is left alone")
    return not odd


# ---------------------------------------------------------------------------------------------

FILE_NAMES = (*ckpt.REQUIRED_FILES, *ckpt.ADAPTER_REQUIRED_FILES, ckpt.WEIGHTS_INDEX, ckpt.WEIGHTS_BIN, ckpt.MANIFEST, ckpt.GENERATION_CONFIG, *ckpt.TOKENIZER_FILES,
              foreign.HF_STATE, foreign.HF_OPTIMIZER, foreign.HF_SCHEDULER, "rng_state.pth", "rng_state_0.pth")


def _check_files(report: Report, folder: Path) -> None:
    """Present, and each loads the way the trainer loads it (a damaged file is a problem, not an omission)."""
    before = len(report.problems)
    if not (folder / ckpt.MODEL_CONFIG).is_file():
        report.fail("config_missing", f"{ckpt.MODEL_CONFIG} is missing")
    else:
        _loads(report, "config_unreadable", loadable.config_problem(folder))
    if not (folder / ckpt.GENERATION_CONFIG).is_file():
        report.fail("generation_config_missing", f"{ckpt.GENERATION_CONFIG} is missing", "warn")
    else:
        _loads(report, "generation_config_unreadable", loadable.generation_config_problem(folder))
    if not any((folder / name).is_file() for name in ckpt.TOKENIZER_VOCAB_FILES):
        report.fail("tokenizer_missing", "tokenizer files are missing (tokenizer.json / spiece.model)")
    else:
        _loads(report, "tokenizer_unreadable", loadable.tokenizer_problem(folder))
    if len(report.problems) == before:
        report.ok("config, generation config and tokenizer load")


def _check_adapter(report: Report, folder: Path, deep: bool) -> None:
    """A LoRA checkpoint: the adapter's header and config agree, the base it belongs to is recorded, the
    tokenizer loads (there is no model config: the base's comes from --pretrained-model)."""
    try:
        header = trust.read_safetensors_header(folder / ckpt.ADAPTER_WEIGHTS)
    except (trust.Untrusted, ValueError, OSError) as err:
        report.fail("adapter_unreadable", f"{ckpt.ADAPTER_WEIGHTS}: {err}")
        header = None
    config = None
    try:
        config = trust.read_json(folder / ckpt.ADAPTER_CONFIG)
    except (trust.Untrusted, OSError) as err:
        report.fail("adapter_config_unreadable", f"{ckpt.ADAPTER_CONFIG}: {err}")
    if config is not None and not (isinstance(config, dict) and isinstance(config.get("r"), int)):
        report.fail("adapter_config_unreadable", f"{ckpt.ADAPTER_CONFIG} holds no LoRA config (no integer r)")
        config = None
    if header is not None:
        names = [n for n in header if n != "__metadata__"]
        ranks = {header[n]["shape"][0] for n in names if "lora_A" in n and header[n].get("shape")}
        if not names or not all("lora_A" in n or "lora_B" in n for n in names):
            report.fail("adapter_unreadable", f"{ckpt.ADAPTER_WEIGHTS} holds tensors that are not LoRA A / B matrices")
        elif config is not None and ranks != {config["r"]}:
            report.fail("adapter_unreadable", f"{ckpt.ADAPTER_WEIGHTS} has rank {sorted(ranks)}, "
                                              f"{ckpt.ADAPTER_CONFIG} says r={config['r']}")
        else:
            report.ok(f"adapter readable ({len(names)} tensors, r={config['r'] if config else '?'})")
            report.facts["adapter_header"] = header
            if deep:
                bad = wt.nonfinite_tensors([folder / ckpt.ADAPTER_WEIGHTS])
                if bad:
                    report.fail("weights_nonfinite", f"{len(bad)} adapter tensors hold NaN or Inf (e.g. {bad[0]})")
                else:
                    report.ok("every adapter tensor read, all values finite")
    base = ckrecords.read_base(folder)
    if base is None:
        report.fail("base_record_missing", f"{ckpt.BASE_RECORD} is missing or malformed: the base model the adapter "
                                           "belongs to, and its fingerprint, are unknown")
    else:
        report.ok(f"base model recorded: {printable(base['pretrained_model'], 120)} (weights' sha256 "
                  f"{base['sha256'][:12]})")
    if not any((folder / name).is_file() for name in ckpt.TOKENIZER_VOCAB_FILES):
        report.fail("tokenizer_missing", "tokenizer files are missing (tokenizer.json / spiece.model)")
    else:
        problem = loadable.tokenizer_problem(folder)
        _loads(report, "tokenizer_unreadable", problem)
        if not problem:
            report.ok("tokenizer loads")


def _loads(report: Report, code: str, problem: str | None) -> None:
    if problem:
        report.fail(code, problem)


def _check_hf_files(report: Report, folder: Path) -> None:
    for name in ("rng_state.pth", "rng_state_0.pth"):
        if (folder / name).is_file():
            problem = loadable.rng_file_problem(folder / name)
            if problem:
                report.fail("rng_unreadable", f"{problem}; never listed as \"no RNG state\"")


def _check_weights(report: Report, folder: Path, deep: bool):
    try:
        layout, header, files = weight_files.read_weights(folder)
    except weight_files.MissingShard as err:
        report.fail("weights_missing", str(err))
        return None
    except (ValueError, OSError) as err:  # trust.Untrusted too: a link, a FIFO, a hostile header
        report.fail("weights_unreadable", str(err))
        return None
    if layout is None:
        report.fail("weights_missing", f"{ckpt.WEIGHTS} is missing (nor sharded weights with "
                                       f"{ckpt.WEIGHTS_INDEX}, nor {ckpt.WEIGHTS_BIN})")
        return None
    report.facts.update(header=header, weights_layout=layout, weight_files=files)
    where = {"single": "", "sharded": f" in {len(files)} shards", "bin": f" in {ckpt.WEIGHTS_BIN}"}[layout]
    report.ok(f"model weights readable ({len(header)} tensors{where})")
    if layout == "bin":
        report.fail("weights_bin", f"weights are in {ckpt.WEIGHTS_BIN} (read with weights_only=True); --fix "
                                   f"converts them to {ckpt.WEIGHTS}, keeping the original", "warn")
    bad = wrappers.wrapped(header)
    if bad:
        report.fail("weights_prefixed", f"{len(bad)} weight names carry a _orig_mod./module. prefix "
                                        f"(e.g. {bad[0]}); --fix removes it")
    shown = files[0].name if len(files) == 1 else f"the {len(files)} weight shards"
    model = None
    if (folder / ckpt.MODEL_CONFIG).is_file() and "config_unreadable" not in report.codes():
        too_big = loadable.layers_problem(folder, header)
        if too_big:  # never build thousands of layers a config claims without the weights to match
            report.fail("weights_mismatch", f"weights do not match {ckpt.MODEL_CONFIG}: {too_big}")
            return None
        try:
            model = wt.meta_model(folder, None, header)
        except Exception as err:  # reading lm_head / shared to decide on the tie: unreadable data
            report.fail("weights_unreadable", loadable.describe(shown, err))
            return None
    if model is not None:
        _check_shapes(report, {wrappers.strip(k): dict(v, name=k) for k, v in header.items()}, model, deep)
    if deep and not report.codes() & {"weights_mismatch", "lm_head_missing", "weights_unreadable"}:
        try:  # fatal already: no full read
            nonfinite = wt.nonfinite_tensors(files)
        except Exception as err:  # safetensors' own checks go further than the header's
            report.fail("weights_unreadable", loadable.describe(shown, err))
            return model
        if nonfinite:
            report.fail("weights_nonfinite", f"{len(nonfinite)} tensors hold NaN or Inf (e.g. {nonfinite[0]})")
        else:
            report.ok("every tensor read" + (f" in each of the {len(files)} shards" if layout == "sharded" else "")
                      + ", all values finite")
    return model


def _check_shapes(report: Report, header: dict, model, deep: bool) -> None:
    shapes, ids = wt.expected_tensors(model)
    unknown = [n for n in header if n not in shapes]
    wrong = [n for n in header if n in shapes and tuple(header[n]["shape"]) != shapes[n]]
    present_ids = {ids.get(n) for n in header}
    missing = [n for n in shapes if n not in header and ids.get(n) not in present_ids]
    if unknown or wrong or missing:
        parts = [f"{len(x)} {what} (e.g. {x[0]})" for x, what in
                 ((missing, "missing"), (wrong, "with the wrong shape"), (unknown, "unknown")) if x]
        code = "lm_head_missing" if missing == ["lm_head.weight"] and not wrong else "weights_mismatch"
        report.fail(code, "weights do not match config.json: " + ", ".join(parts))
        return
    report.ok(f"weight shapes match {ckpt.MODEL_CONFIG}")
    tied = [n for n in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight") if n in header]
    if tied and "shared.weight" in header and deep:
        try:
            equal = all(wt.tensors_equal(header, "shared.weight", n) for n in tied)
        except Exception as err:
            report.fail("weights_unreadable", loadable.describe(header["shared.weight"]["file"].name, err))
            return
        if not equal:
            report.fail("embeddings_inconsistent", "encoder/decoder embed_tokens differ from the shared embedding")
            return
    report.ok("shared embeddings consistent" + ("" if "lm_head.weight" in header else " (lm_head tied)"))


def _check_state(report: Report, folder: Path, status: str, state, detail, model) -> None:
    name = ckpt.TRAINING_STATE
    if status == "missing":
        if report.kind == foreign.HF:
            report.fail("hf_trainer_state", f"Hugging Face Trainer checkpoint: no {name} yet (--fix builds it from "
                                            "trainer_state.json, training_args.bin, optimizer.pt, scheduler.pt, "
                                            "rng_state*.pth)")
            _check_hf_settings(report, folder)
        elif report.kind == foreign.ACCELERATE:
            _check_accelerate(report, folder)
        else:
            report.fail("state_missing", f"{name} is missing")
        return
    if status in ("unsafe", "unreadable"):
        report.fail(f"state_{status}", f"{name}: {detail}")
        return
    if status == "legacy":
        report.fail("state_legacy", f"{name} is in the replaced system's format (epoch {state.get('epoch')} "
                                    "1-based, numpy RNG): --fix converts it, keeping optimizer and scheduler")
        report.global_step = int(state.get("global_step", 0))
        report.epoch = max(0, int(state.get("epoch", 1)) - 1)
        return
    report.ok(f"{name} loads with weights_only=True")
    step, epoch = state.get("global_step"), state.get("epoch", 0)
    if not (isinstance(step, int) and isinstance(epoch, int)) or isinstance(step, bool):
        report.fail("state_unreadable", f"{name} holds a global_step / epoch that are not integers")
        return
    report.global_step, report.epoch = step, epoch
    folder_step = ckpt.step_of(folder)
    if folder_step is not None and folder_step != step:
        report.fail("step_mismatch", f"{name} is at step {step} but the folder is named {folder.name}")
    else:
        report.ok(f"global_step {step} matches the folder name")
    _check_optimizer(report, state, model)
    sched = state.get("scheduler_state_dict")
    sched = sched if isinstance(sched, dict) else {}
    if sched.get("last_epoch") != step:
        report.fail("scheduler_mismatch", f"scheduler is at step {sched.get('last_epoch')}, the run at {step}")
    else:
        report.ok(f"scheduler position {step} matches global_step")
    if not state.get("rng_states"):
        report.fail("rng_missing", "no RNG state: dropout and shuffling draw fresh seeds on resume", "warn")
    elif "rng_states" in (state.get("rebuilt") or ()):
        report.fail("rng_rebuilt", "RNG state rebuilt from the run's seed and the step: dropout and shuffling "
                                   "draw new streams on resume", "warn")


def _check_accelerate(report: Report, folder: Path) -> None:
    """An ``Accelerator.save_state`` folder: what --fix can build from it and what it cannot know."""
    have = [n for n in (foreign.ACC_OPTIMIZER, foreign.ACC_SCHEDULER, foreign.ACC_RNG) if (folder / n).is_file()]
    lacking = [n for n in (foreign.ACC_OPTIMIZER, foreign.ACC_SCHEDULER, foreign.ACC_RNG) if n not in have]
    report.fail("accelerate_state", f"accelerate save_state folder: no {ckpt.TRAINING_STATE} yet; --fix builds it "
                                    f"from {', '.join(have)}" + (f" ({', '.join(lacking)} missing)" if lacking else "")
                + f", and takes {ckpt.MODEL_CONFIG} and the tokenizer from --pretrained-model or a sibling checkpoint")
    if (folder / foreign.ACC_RNG).is_file():
        try:
            foreign.load_with_numpy(folder / foreign.ACC_RNG)
        except (foreign.UnsafePickle, ckpt.CheckpointError) as err:
            report.fail("accelerate_rng_unsafe", f"{err} (the RNG state will not be restored)", "warn")
    report.fail("accelerate_unknown", "not recorded by accelerate: steps per epoch and samples per step (pass "
                                      "--steps-per-epoch, --samples-per-step), the LR schedule's shape "
                                      "(--warmup-steps, --lr-scheduler, --total-steps) unless a sibling has them"
                + (f"; {foreign.ACC_SAMPLER}'s position is not used (the sample order is this project's)"
                   if (folder / foreign.ACC_SAMPLER).is_file() else ""), "warn")


def _check_hf_settings(report: Report, folder: Path) -> None:
    """What the Hugging Face run's files tell about its schedule and shape, and what must come from flags."""
    values, problems = foreign.hf_settings(folder)
    missing = foreign.hf_unrecovered(values)
    if "--learning-rate" in missing and (folder / foreign.HF_SCHEDULER).is_file():
        missing.remove("--learning-rate")  # scheduler.pt keeps the peak LR
    if missing:
        why = "; ".join(problems) or "not recorded"
        report.fail("hf_settings_missing", f"the run's {', '.join(f[2:] for f in missing)} could not be recovered "
                                           f"({why}): --fix needs {' '.join(f + ' ...' for f in missing)}")
        return
    shown = ", ".join(f"{k} {values[k]}" for k in ("learning_rate", "lr_scheduler", "warmup_steps", "samples_per_step")
                      if k in values)
    report.ok(f"Hugging Face run settings read without unpickling: {shown}")
    if problems:
        report.fail("hf_settings_partial", "; ".join(problems), "warn")


def _check_optimizer(report: Report, state: dict, model) -> None:
    optimizer = state.get("optimizer_state_dict") or {}
    if state.get("optimizer_state_empty") or not optimizer.get("state"):
        report.fail("optimizer_empty", "optimizer state is empty: Adam moments restart and the learning rate "
                                       "re-warms over --optimizer-rewarmup-steps on resume", "warn")
        return
    if model is None:
        _check_adapter_optimizer(report, optimizer)
        return
    shapes, _ = wt.expected_tensors(model)
    problem = wt.optimizer_problem(optimizer, wt.our_layout(model), shapes)
    if problem:
        report.fail("optimizer_mismatch", f"optimizer state does not fit the model: {problem}")
    else:
        report.ok(f"optimizer state covers all {sum(map(len, wt.our_layout(model)))} trainable parameters")


def _check_adapter_optimizer(report: Report, optimizer: dict) -> None:
    """A LoRA checkpoint's optimizer: one state per adapter tensor, each moment of that tensor's shape."""
    header = report.facts.get("adapter_header")
    if header is None:
        return
    want = sorted(tuple(e["shape"]) for n, e in header.items() if n != "__metadata__")
    got = sorted(tuple(m["exp_avg"].shape) for m in optimizer["state"].values()
                 if isinstance(m, dict) and hasattr(m.get("exp_avg"), "shape"))
    if got and got != want:  # Adafactor keeps no exp_avg: its state is not compared here
        report.fail("optimizer_mismatch", f"optimizer state does not fit the adapter: {len(got)} moments for "
                                          f"{len(want)} adapter tensors")
    else:
        report.ok(f"optimizer state over the adapter ({len(optimizer['state'])} tensors)")


def _check_manifest(report: Report, folder: Path, deep: bool) -> None:
    """A file whose size or sha256 differs from the manifest is damage, never a stale manifest."""
    problems = ckmanifest.manifest_problems(folder, verify_hashes=deep)
    if not problems:
        report.ok(f"{ckpt.MANIFEST} verifies" + (" (sha256 of every file)" if deep else " (sizes)"))
        return
    corrupt = [p for p in problems if "sha256" in p or " bytes, the manifest says " in p]
    for problem in corrupt:
        name = problem.split(" ", 1)[0]
        code = ("weights_corrupt" if ckpt.is_weights_file(name) else "state_corrupt"
                if name == ckpt.TRAINING_STATE else "file_corrupt")
        report.fail(code, f"{problem}: the file changed after it was saved (bit rot, a bad copy or tampering)")
    if len(corrupt) < len(problems):
        report.fail("manifest_invalid", f"{ckpt.MANIFEST}: {[p for p in problems if p not in corrupt][0]}")


def healthy_sibling(folder: Path) -> str | None:
    """The newest other checkpoint of the run that a resume would accept (the rules of ``latest``)."""
    for path in reversed(ckpt.list_checkpoints(folder.parent)):
        if path.name != folder.name and ckmanifest.usability_problem(path) is None:
            return str(path)
    return None
