"""First and cached preparation of generated corpora with planted duplicates: time, peak memory, recall.

``python -m bench.dedup_scale RECIPENLG_ROWS FOODCOM_ROWS MODEL WORK [COPY_SHARE]`` writes two files of
distinct generated recipes with planted copies (``devtools/planted.planted_stream``; COPY_SHARE of the
rows, default 0.1, are re-cased, reordered or reworded copies of earlier rows of the same file): one
in RecipeNLG's layout, one in Food.com's (``RAW_recipes.csv``). For each file it runs, in a subprocess
of its own (its peak RSS, its workers' included, is its own), what training does before its first step
(read, tokenize and cache, deduplicate, split: ``data/inspect_cli.py``'s pipeline without the plots),
twice: the first run and the cached rerun. Prints one JSON line: per file and in total the seconds,
rows/s, CPU seconds (this process and its workers: what the run would take on free cores) and peak
RSS of each run, the recall of each kind of planted copy, the share of the distinct
originals removed, and the load average (``os.getloadavg``) before and after: the machine is shared.

Copies across the two files (one recipe in both layouts) need ``--data`` with several files (issue 23
item 1); until then each file is deduplicated on its own, as training does.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _prepare(data: str, model: str, cache: str) -> dict:
    from chef_genius.data import corpus
    from chef_genius.data.readers import ReadOptions
    from chef_genius.data.tokenized import load_tokenized
    from chef_genius.model.loading import load_tokenizer

    def cpu() -> float:  # this process and its finished workers: what the run costs on free cores
        mine, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return mine.ru_utime + mine.ru_stime + workers.ru_utime + workers.ru_stime

    tokenizer = load_tokenizer(model)
    started, cpu_started = time.perf_counter(), cpu()
    train = load_tokenized(data, tokenizer, 256, 512, cache, 0, ReadOptions(), "log")
    tokenized, cpu_tokenized = time.perf_counter(), cpu()
    found = corpus.find_duplicates(data, ReadOptions(), corpus.DedupOptions(), train.cache_dir)
    corpus.content_split(found.result.keys, found.result.kept, 0.02, 42)
    done, cpu_done = time.perf_counter(), cpu()
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    return {
        "seconds": round(done - started, 2),
        "tokenize_s": round(tokenized - started, 2),
        "dedup_s": round(done - tokenized, 2),
        "tokenize_cpu_s": round(cpu_tokenized - cpu_started, 2),
        "dedup_cpu_s": round(cpu_done - cpu_tokenized, 2),
        "from_cache": train.from_cache,
        "peak_rss_mb": round(peak / 1024, 1),  # the largest of this process and any one of its workers
        "removed": sorted(r.row for r in found.result.removed),
    }


def _write(path: Path, rows: int, share: float, seed: int, layout: str) -> list[tuple[int, int, str]]:
    from chef_genius.devtools.planted import planted_stream, write_foodcom_csv
    from chef_genius.devtools.sample_data import write_recipenlg_csv

    planted: list[tuple[int, int, str]] = []

    def recipes():
        for row, (recipe, copy) in enumerate(planted_stream(rows, share, seed)):
            if copy is not None:
                planted.append((row, copy[0], copy[1]))
            yield recipe

    (write_recipenlg_csv if layout == "recipenlg" else write_foodcom_csv)(path, recipes())
    return planted


def _one_file(path: Path, rows: int, planted, model: str, cache: Path) -> dict:
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "bench.dedup_scale", "--one", str(path), model, str(cache)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    removed = set(runs[0].pop("removed"))
    runs[1].pop("removed")
    copies = {c for c, _, _ in planted}
    recall = {}
    for kind in ("recased", "reordered", "reworded"):
        of_kind = [c for c, _, k in planted if k == kind]
        recall[kind] = round(sum(c in removed for c in of_kind) / max(1, len(of_kind)), 4)
    runs[0]["rows_per_s"] = round(rows / runs[0]["seconds"])
    return {
        "rows": rows,
        "copies": len(copies),
        "mb": round(path.stat().st_size / 1e6, 1),
        "first": runs[0],
        "cached": runs[1],
        "recall": recall,
        "distinct_removed": len(removed - copies),
        "distinct_removed_share": round(len(removed - copies) / (rows - len(copies)), 5),
    }


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[0] == "--one":
        print(json.dumps(_prepare(*argv[1:4])))
        return
    recipenlg, foodcom, model, work = int(argv[0]), int(argv[1]), argv[2], Path(argv[3])
    share = float(argv[4]) if len(argv) > 4 else 0.1
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    files = {}
    for layout, rows, seed in (("recipenlg", recipenlg, 1), ("foodcom", foodcom, 2)):
        if rows:
            path = work / f"{layout}-{rows}.csv"
            files[layout] = _one_file(path, rows, _write(path, rows, share, seed, layout), model, work / "cache")
    total = {
        run: {
            "seconds": round(sum(f[run]["seconds"] for f in files.values()), 2),
            "peak_rss_mb": max(f[run]["peak_rss_mb"] for f in files.values()),
            "cpu_s": round(sum(f[run]["tokenize_cpu_s"] + f[run]["dedup_cpu_s"] for f in files.values()), 2),
        }
        for run in ("first", "cached")
    }
    total["first"]["rows_per_s"] = round((recipenlg + foodcom) / total["first"]["seconds"])
    print(
        json.dumps(
            {
                "files": files,
                "total": total,
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in os.getloadavg()],
                "cpus": len(os.sched_getaffinity(0)),
            }
        )
    )


if __name__ == "__main__":
    main()
