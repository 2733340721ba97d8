"""Preprocessing a generated RecipeNLG-layout CSV: first (parse + tokenize + cache) vs cached run.

Each run is its own subprocess, so its peak RSS (``ru_maxrss``, the process plus its largest worker)
is that run's alone. Run as ``python -m bench.preprocess CSV MODEL CACHE NUM_PROC`` it does one run
and prints one JSON object.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from .common import write_recipes_csv


def _one_run(csv: str, model: str, cache: str, num_proc: int) -> dict:
    from chef_genius.data.tokenized import load_tokenized
    from chef_genius.model.loading import load_tokenizer

    tokenizer = load_tokenizer(model)
    started = time.perf_counter()
    result = load_tokenized(csv, tokenizer, 256, 512, cache, num_proc)
    seconds = time.perf_counter() - started
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "seconds": seconds,
        "rows": result.stats.get("rows"),
        "kept": result.stats.get("kept"),
        "from_cache": result.from_cache,
        "peak_rss_mb": round(self_kb / 1024, 1),
        "peak_worker_rss_mb": round(child_kb / 1024, 1),
    }


def preprocess_cached(rows: int, model: Path, work: Path, reduced_from: int | None = None) -> dict:
    csv = work / f"recipes-{rows}.csv"
    started = time.perf_counter()
    write_recipes_csv(csv, rows)
    generate_s = time.perf_counter() - started
    cache = work / "preprocess-cache"
    num_proc = max(1, min(4, os.cpu_count() or 1))
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "bench.preprocess", str(csv), str(model), str(cache), str(num_proc)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, cached = runs
    record = dict(
        name="preprocess_cached",
        ours=cached["seconds"],
        baseline=first["seconds"],
        unit="s",
        target="<= 0.05",
        rows=rows,
        csv_mb=round(csv.stat().st_size / 1e6, 1),
        num_proc=num_proc,
        first_rows_per_s=round(rows / first["seconds"]),
        first_peak_rss_mb=first["peak_rss_mb"],
        first_peak_worker_rss_mb=first["peak_worker_rss_mb"],
        cached_peak_rss_mb=cached["peak_rss_mb"],
        cached_from_cache=cached["from_cache"],
        generate_csv_s=round(generate_s, 1),
    )
    if reduced_from:
        record["note"] = f"{rows} rows, not {reduced_from}: reduced for --quick/--smoke; run without them for 1M"
    csv.unlink()
    return record


if __name__ == "__main__":
    print(json.dumps(_one_run(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))))
