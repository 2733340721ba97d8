"""Time to the first step on a cached corpus: a new run and a resume, each its own ``cli`` process.

    nice -n 10 python -m bench.start --rows 1000000 --work-dir /tmp/start-1m
    nice -n 10 python -m bench.start --rows 1000000 --work-dir /tmp/start-1m --repo /tmp/old-checkout  # before

Prepare (once per work folder, not timed): a generated RecipeNLG-layout CSV of ``--rows`` recipes
(``common.write_recipes_csv``), tokenized into the cache, the duplicate decision of the default
``--dedup remove``, and a run stopped at step 1 with a checkpoint. ``--prepare run`` makes them with a
first training run, the duplicate search included (about 860 rows/s in one process on this machine:
20 minutes and more for 1M rows); ``--prepare synthetic`` tokenizes with the product's code and writes a
duplicate decision of the real one's shapes and shares (``SYNTHETIC_REMOVED``: 16 % of the rows, the
share a real search removed from 50k generated rows) in the file and under the key a run reads it
from, then stops a run at step 1: the timed runs read the same files either way, only how the decision
was reached differs.

Timed (``--repeats`` times each, alternated): a *cached run* (a new run folder, ``--max-steps 1``) and
a *resume* (a copy of the stopped run folder, ``--resume latest``), from the process start until the
log's first ``step`` line; the log lines' arrival times give the phases (``first_step_s``, and the
seconds until the memory plan (imports and the model), the data summary, and the end of setup).
One JSON object per run on stdout, then one per kind with the median and the spread, the load
average before and after; ``first_step_cpu_s`` is the process's CPU time at that line (all threads:
steadier than wall time on shared cores). ``--repo`` times another checkout (the "before" of a
change) on the same prepared folder. ``--profile`` writes a cProfile of each run's process beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SYNTHETIC_REMOVED = 0.16
PHASES = {  # log line (regular expression) -> phase name: the seconds at which it arrives
    r"INFO memory plan:": "model_s",
    r"INFO data .*rows used": "data_s",
    r"INFO metrics: ": "setup_s",
}
STEP = re.compile(r"INFO step \d+/")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.start", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="recipes in the generated CSV (default 1M)")
    p.add_argument("--work-dir", required=True, help="the prepared folder (kept: a second call reuses it)")
    p.add_argument("--prepare", choices=("run", "synthetic"), default="run", help="how the cache is made (above)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--repo", default=str(REPO), help="the checkout whose cli is timed (default this one)")
    p.add_argument("--only", choices=("run", "resume"), nargs="+", default=("run", "resume"))
    p.add_argument("--profile", action="store_true", help="a cProfile of each timed process (RUN.prof)")
    p.add_argument("--csv", help="an existing recipe CSV instead of WORK/recipes.csv (then --rows is only reported)")
    p.add_argument("--cache", help="the tokenized cache folder (default WORK/cache)")
    p.add_argument("--model", help="the model folder (default WORK/tiny, built offline)")
    args = p.parse_args(argv)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    work = Path(args.work_dir)
    paths = Paths(work, args.csv, args.cache, args.model)
    stopped = prepare(paths, args.rows, args.prepare, env)
    runs: dict[str, list[dict]] = {kind: [] for kind in args.only}
    for i in range(args.repeats):
        for kind in args.only:
            out = work / "timed" / f"{kind}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            extra = ["--max-steps", "1"]
            if kind == "resume":
                shutil.copytree(stopped, out)
                extra = ["--max-steps", "3", "--stop-after-steps", "1", "--resume-from-checkpoint", "latest"]
            profile = out.with_suffix(".prof") if args.profile else None
            record = timed(args.repo, flags(paths, out, *extra), env, profile)
            record.update(name=f"start_{kind}", repeat=i, rows=args.rows, repo=args.repo)
            print(json.dumps(record), flush=True)
            runs[kind].append(record)
    for kind, records in runs.items():
        if not records:
            continue
        firsts = [r["first_step_s"] for r in records]
        print(
            json.dumps(
                {
                    "name": f"start_{kind}_median",
                    "ours": round(statistics.median(firsts), 2),
                    "unit": "s",
                    "target": "<= 10",
                    "runs": firsts,
                    "cpu_s_median": statistics.median(r.get("first_step_cpu_s") or 0 for r in records),
                    "phases_median": {
                        k: round(statistics.median(r[k] for r in records if k in r), 2)
                        for k in PHASES.values()
                        if all(k in r for r in records)
                    },
                    "load_before": [r["load_before"] for r in records],
                    "rows": args.rows,
                    "prepare": args.prepare,
                    "repo": args.repo,
                }
            ),
            flush=True,
        )
    return 0


class Paths:
    def __init__(self, work: Path, csv=None, cache=None, model=None):
        self.work = work
        self.csv = Path(csv) if csv else work / "recipes.csv"
        self.cache = Path(cache) if cache else work / "cache"
        self.model = Path(model) if model else work / "tiny"


def flags(paths: Paths, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(paths.csv),
        "--pretrained-model", str(paths.model),
        "--model-output", str(out),
        "--cache-dir", str(paths.cache),
        "--batch-size", "8",
        "--save-steps", "1",
        "--eval-steps", "1000",
        "--logging-steps", "1",
        "--max-source-length", "64",
        "--max-target-length", "128",
        *extra,
    ]  # fmt: skip


def timed(repo: str, argv: list[str], env: dict, profile: Path | None = None) -> dict:
    """Run the trainer's cli from ``repo``; the seconds until each phase's log line and the first step."""
    load = os.getloadavg()[0]
    command = [sys.executable]
    if profile is not None:
        command += ["-m", "cProfile", "-o", str(profile)]
    command += [str(Path(repo) / "cli" / "complete_optimized_training.py"), *argv]
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    record: dict = {}
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        now = round(time.perf_counter() - started, 2)
        lines.append(line)
        for pattern, phase in PHASES.items():
            if phase not in record and re.search(pattern, line):
                record[phase] = now
        if "first_step_s" not in record and STEP.search(line):
            record["first_step_s"] = now
            record["first_step_cpu_s"] = cpu_seconds(proc.pid)
    code = proc.wait()
    if code != 0 or "first_step_s" not in record:
        sys.stderr.write("".join(lines[-30:]))
        raise SystemExit(f"the timed run failed (exit {code})")
    record["load_before"], record["load_after"] = round(load, 2), round(os.getloadavg()[0], 2)
    return record


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux ``/proc``; else None):
    less swayed than wall time by the other processes on shared cores."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def prepare(paths: Paths, rows: int, how: str, env: dict) -> Path:
    """The CSV, the tiny model, the cache and a run stopped at step 1 (made once); the stopped run."""
    work = paths.work
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    stopped = work / "stopped"
    if not paths.model.is_dir():
        from chef_genius.model.tiny import build_tiny

        build_tiny(paths.model)
    if not paths.csv.is_file():
        from .common import write_recipes_csv

        write_recipes_csv(work / "recipes.tmp.csv", rows)
        os.replace(work / "recipes.tmp.csv", paths.csv)
    if (stopped / "checkpoint-1").is_dir():
        return stopped
    if how == "synthetic":
        synthetic_decision(paths)
    shutil.rmtree(stopped, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, str(REPO / "cli" / "complete_optimized_training.py")]
        + flags(paths, stopped, "--max-steps", "3", "--stop-after-steps", "1"),
        cwd=REPO,
        env=env,
        check=True,
    )
    print(json.dumps({"name": "start_prepare", "prepare": how, "seconds": round(time.perf_counter() - started, 1)}))
    return stopped


def synthetic_decision(paths: Paths) -> None:
    """The tokenized cache (the product's code), and a duplicate decision of a real one's shapes written
    where ``corpus.find_duplicates`` reads it: one in ``SYNTHETIC_REMOVED`` rows removed as a near twin
    of an earlier row, random content and band keys, the rows' titles."""
    import numpy as np

    from chef_genius.data import corpus, dedup
    from chef_genius.data.readers import ReadOptions
    from chef_genius.data.tokenized import load_tokenized
    from chef_genius.model.loading import load_tokenizer

    csv = paths.csv
    tokenizer = load_tokenizer(str(paths.model))
    tokenized = load_tokenized(csv, tokenizer, 64, 128, paths.cache)
    rows = len(tokenized.dataset)
    settings = corpus.DedupOptions()
    saved = corpus.result_path(tokenized.cache_dir, csv, ReadOptions(), settings, None)
    if saved.is_file():
        return
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, rows, dtype=np.uint64)
    gone = np.sort(rng.choice(np.arange(1, rows), int(rows * SYNTHETIC_REMOVED), replace=False))
    twins = (rng.random(len(gone)) * gone).astype(np.int64)
    keys[gone] = keys[twins]
    removed = [dedup.Removal(int(r), int(t), "near", 0.8) for r, t in zip(gone, twins)]
    bands = rng.integers(0, 2**32, (rows, dedup.NUM_BANDS), dtype=np.uint32)
    result = dedup.Dedup(keys, removed, bands, settings.threshold)
    titles = [f"Generated recipe {i}" for i in range(rows)]
    corpus._save(saved, corpus.FileDedup(str(csv), np.arange(1, rows + 1), titles, result))


if __name__ == "__main__":
    sys.exit(main())
