"""``bash bench/gpu_check.sh``: what a session lent a CUDA GPU runs first, from the repository root.

Within ``--budget-s`` (default 480: 8 minutes, so one 10-minute command holds it with room to spare)
it writes ONE JSON summary, ``$OUT/gpu_check.json`` (``--out``; default ``./gpu-check-out``),
rewritten after every phase, so whatever ends the run the phases done so far are on disk:

  preflight     (this process, no heavy import, a second) the packages the trainer needs, their versions
                against requirements.txt; one missing: one line on stderr, exit 2, nothing else runs
  build         FLAN-T5-large from its config (``bench/common.FLAN_T5_LARGE``, random weights, no hub)
                and generated recipes, tokenized into the cache
  eager         our trainer, bf16, eager, an async checkpoint half-way: tokens/s, MFU, peak memory
                against the memory plan (``chef_genius/model/memory.py``), what each save blocked
  resume        from eager's half-way checkpoint, in another folder, to the same last step: time to
                the first step, the resumed step losses against eager's
  gc_adafactor  ``--gradient-checkpointing --optimizer adafactor``: tokens/s, peak memory against plan
  compiled      ``--compile``: time to the first step (compilation), steady tokens/s, graph breaks
  vs_seq2seq    ours against transformers' ``Seq2SeqTrainer`` on identical batches (bench/throughput.py's
                loop comparison, each in a fresh process, eager bf16, one save and one evaluation in the
                timed window): tokens/s, MFU, peak memory, evaluation and save seconds

Each phase has its own budget (``BUDGETS``); a phase that outlives it is stopped and recorded as
timed out, and one that would start with less than its minimum left of the whole budget is skipped
with the reason. The phases (``bench/gpu_phases.py``) run in one child process (one import of torch
and transformers); this process only watches the child's progress file, so a hung phase is killed,
recorded, and the child restarted for the phases after it. Exit 0 when every phase passed, 1 when
one failed, timed out or was skipped, 2 when a package is missing or there is no CUDA GPU (without
``--dry-run``).

``--dry-run``: the same phases on CPU with the tiny model, 2 steps each, fp32, the compiled phase
traced by dynamo with its eager backend (no code generation): the whole path in well under a minute.
The test suite runs it (tests/test_gpu_check.py).

The device machine has no package index: ``bash bench/fetch_wheels.sh`` (here) puts the wheels it
lacks in ``.wheels/`` (ignored by git, carried with the working tree), which ``gpu_check.sh`` installs
into a private folder first. The training path itself needs no ``datasets`` package (the cache is
read with pyarrow alone).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUMMARY = "gpu_check.json"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# import name -> (distribution, what needs it); checked with find_spec, nothing imported
REQUIRED = {
    "torch": ("torch", "everything"),
    "transformers": ("transformers", "the model and Seq2SeqTrainer"),
    "accelerate": ("accelerate", "the trainer's devices and mixed precision"),
    "safetensors": ("safetensors", "checkpoints"),
    "tokenizers": ("tokenizers", "the tokenizer"),
    "numpy": ("numpy", "the sampler"),
    "pyarrow": ("pyarrow", "the tokenized-data cache"),
    "huggingface_hub": ("huggingface-hub", "transformers' model files"),
}
OPTIONAL = ("datasets", "peft", "triton")  # versions recorded when present; the check runs without them

PHASES = ("build", "eager", "resume", "gc_adafactor", "compiled", "vs_seq2seq")


@dataclass(frozen=True)
class Budget:
    seconds: float  # the phase is stopped after this
    minimum: float  # skipped when less than this is left of the whole budget


# Sized for FLAN-T5-large on an H100 (a 9.4 GB checkpoint with AdamW; each fresh process imports torch
# and loads the 3.1 GB of weights): they add up to 460 s of the default 480, the rest for the start.
BUDGETS = {
    "build": Budget(45, 20),
    "eager": Budget(80, 40),
    "resume": Budget(55, 30),
    "gc_adafactor": Budget(45, 25),
    "compiled": Budget(110, 60),
    "vs_seq2seq": Budget(125, 80),
}
DRY_BUDGET = Budget(240, 1)  # generous: the suite runs it on 2 shared cores; about 40 s of CPU in all


@dataclass(frozen=True)
class Sizes:
    """What each phase trains: steps, batch, lengths."""

    model: str
    rows: int
    batch: int
    max_source: int
    max_target: int
    half: int  # eager saves at step ``half`` and ends at ``2 * half``; resume continues from there
    log_every: int
    gc_steps: int
    compiled_steps: int
    vs_warmup: int  # vs_seq2seq: warm-up steps = timed steps = evaluation and save interval
    workers: int
    eval_samples: int


GPU_SIZES = Sizes(
    "flan-t5-large",
    2000,
    8,
    256,
    512,
    half=10,
    log_every=5,
    gc_steps=10,
    compiled_steps=30,
    vs_warmup=10,
    workers=2,
    eval_samples=16,
)
DRY_SIZES = Sizes(
    "tiny", 200, 4, 64, 64, half=2, log_every=1, gc_steps=2, compiled_steps=2, vs_warmup=2, workers=0, eval_samples=8
)


# ---------------------------------------------------------------------------------------------
# this process: preflight, the child, the summary


def parse(argv):
    p = argparse.ArgumentParser(
        prog="bash bench/gpu_check.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model, 2 steps a phase (seconds)")
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole check's time (default 480)")
    p.add_argument(
        "--out",
        default=os.environ.get("OUT") or "gpu-check-out",
        help="folder of the JSON summary (default $OUT, else ./gpu-check-out)",
    )
    p.add_argument(
        "--work-dir",
        help="scratch folder for the model, data and runs (default: a new temporary "
        "folder, removed at the end unless --keep-work)",
    )
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    p.add_argument("--phases", nargs="+", choices=PHASES, help="run only these phases (build always runs)")
    p.add_argument(
        "--model",
        help="a model folder (weights and tokenizer) to check instead of the one the build "
        "phase makes from FLAN-T5-large's config (the tiny one with --dry-run)",
    )
    # the child's own flags
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--progress", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        from .gpu_phases import child_main

        return child_main(args)
    started = time.time()
    deadline = started + args.budget_s - 5  # the summary is written in the last seconds
    out = Path(args.out)
    missing, versions = preflight()
    if missing:
        module, (dist, needed_by) = missing[0]
        more = f" (also missing: {', '.join(m for m, _ in missing[1:])})" if len(missing) > 1 else ""
        print(
            f"gpu_check: missing Python package {dist!r} (import {module}, needed by {needed_by}){more}; put its "
            "wheel in .wheels/ with `bash bench/fetch_wheels.sh` on a machine with a package index, then run "
            "`bash bench/gpu_check.sh`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    out.mkdir(parents=True, exist_ok=True)
    # not under OUT: on the device machine whatever OUT holds is copied back (8 files at most), and a run
    # stopped at the command's limit would leave 9 GB checkpoints and logs there beside the summary
    import tempfile

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="chef-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    summary = {
        "check": "gpu_check",
        "dry_run": args.dry_run,
        "budget_s": args.budget_s,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "commit": _commit(),
        "versions": versions,
        "phases": {},
    }
    wanted = ["build"] + [p for p in PHASES[1:] if not args.phases or p in args.phases]
    status = watch(args, work, wanted, deadline, summary, out)
    if not args.keep_work and not args.work_dir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    summary["elapsed_s"] = round(time.time() - started, 1)
    summary["ok"] = status == EXIT_OK
    _write(out, summary)
    for name, phase in summary["phases"].items():
        print(
            f"gpu_check {name}: {phase.get('status')} in {phase.get('elapsed_s', 0)} s"
            + (f" ({phase['reason']})" if phase.get("reason") else ""),
            file=sys.stderr,
        )
    if "error" in summary:
        print(f"gpu_check: {summary['error']}", file=sys.stderr)
    print(f"gpu_check: summary in {out / SUMMARY} ({summary['elapsed_s']} s)", file=sys.stderr)
    return status


def preflight() -> tuple[list, dict]:
    """(missing [(module, (distribution, needed by))], {distribution: {found, pinned}}): no heavy import."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pins[name.lower()] = version
    missing, versions = [], {}
    for module, (dist, needed_by) in REQUIRED.items():
        if not _importable(module):
            missing.append((module, (dist, needed_by)))
            continue
        versions[dist] = {"found": _version(dist), "pinned": pins.get(dist)}
    for dist in OPTIONAL:
        versions[dist] = {"found": _version(dist), "pinned": pins.get(dist)}
    return missing, versions


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses the name, a broken package's metadata
        return False


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _write(out: Path, summary: dict) -> None:
    path = out / SUMMARY
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    os.replace(temporary, path)


def watch(args, work: Path, wanted: list[str], deadline: float, summary: dict, out: Path) -> int:
    """Run the phases in a child, each under its budget; a killed or crashed child is restarted for the
    phases after the one it was in."""
    results = summary["phases"]
    remaining = list(wanted)
    progress = work / "progress.jsonl"
    while remaining:
        if time.time() >= deadline:
            break
        progress.write_text("")
        command = [
            sys.executable,
            "-m",
            "bench.gpu_check",
            "--child",
            "--progress",
            str(progress),
            "--deadline",
            str(deadline),
            "--work-dir",
            str(work),
            "--phases",
            *remaining,
        ]
        if args.model:
            command += ["--model", str(Path(args.model).resolve())]
        if args.dry_run:
            command.append("--dry-run")
        log_path = work / f"child-{len(wanted) - len(remaining)}.log"
        with open(log_path, "w") as log:
            child = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            current, began, seen = None, time.time(), 0
            while True:
                events = progress.read_text().splitlines()
                for line in events[seen:]:
                    event = json.loads(line)
                    if event["event"] == "start":
                        current, began = event["phase"], time.time()
                    elif event["event"] == "fatal":
                        _stop(child)
                        summary["error"] = event["error"]
                        summary.update(event.get("extra", {}))
                        _skip_rest(results, remaining, f"not run: {event['error']}")
                        _write(out, summary)
                        return EXIT_USAGE
                    elif event["event"] == "env":
                        summary["device"] = event["device"]
                    else:
                        results[event["phase"]] = event["result"]
                        remaining.remove(event["phase"])
                        current = None
                        _write(out, summary)
                seen = len(events)
                budget = DRY_BUDGET if args.dry_run else BUDGETS.get(current, DRY_BUDGET)
                if current is not None and time.time() - began > budget.seconds:
                    _stop(child)
                    results[current] = {
                        "status": "timeout",
                        "elapsed_s": round(time.time() - began, 1),
                        "reason": f"stopped after its budget of {budget.seconds:.0f} s",
                        "log_tail": _tail(log_path),
                    }
                    remaining.remove(current)
                    _write(out, summary)
                    break
                if time.time() >= deadline:
                    _stop(child)
                    if current is not None:
                        results[current] = {
                            "status": "timeout",
                            "elapsed_s": round(time.time() - began, 1),
                            "reason": "the whole budget ran out",
                            "log_tail": _tail(log_path),
                        }
                        remaining.remove(current)
                    break
                if child.poll() is not None and seen == len(progress.read_text().splitlines()):
                    if current is not None:
                        results[current] = {
                            "status": "failed",
                            "elapsed_s": round(time.time() - began, 1),
                            "reason": f"the check's process ended with exit code {child.returncode}",
                            "log_tail": _tail(log_path),
                        }
                        remaining.remove(current)
                        _write(out, summary)
                    elif remaining and child.returncode != 0:  # died before its first phase: do not loop
                        summary["error"] = f"the check's process ended with exit code {child.returncode}"
                        summary["log_tail"] = _tail(log_path)
                        _skip_rest(results, remaining, "not run: the check's process failed at start")
                    break
                time.sleep(0.2)
    _skip_rest(results, remaining, "skipped: the whole budget was spent")
    _write(out, summary)
    return EXIT_OK if all(r.get("status") == "ok" for r in results.values()) and "error" not in summary else EXIT_FAILED


def _skip_rest(results: dict, remaining: list[str], reason: str) -> None:
    for name in list(remaining):
        results[name] = {"status": "skipped", "reason": reason}
        remaining.remove(name)


def _stop(child: subprocess.Popen) -> None:
    """End the child and everything it started (loader workers, the vs_seq2seq contenders)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
