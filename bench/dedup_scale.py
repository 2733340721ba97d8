"""First and cached preparation of a generated corpus with planted duplicates: time, peak memory, recall.

``python -m bench.dedup_scale ROWS COPIES MODEL WORK`` writes ROWS generated recipes plus COPIES
planted copies (``devtools/planted.py``) as one RecipeNLG-layout CSV, then runs, each in its own
subprocess (so its peak RSS is its own), what training does before its first step: read, tokenize and
cache, deduplicate, split (``data/inspect_cli.py``'s pipeline without the plots), twice: the first run
and the cached rerun. Prints one JSON line: seconds and peak RSS of each, the recall of the planted
copies and the share of the generated recipes removed. A scaled-down stand-in for issue 23's item 6.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _prepare(csv: str, model: str, cache: str) -> dict:
    from chef_genius.data import corpus
    from chef_genius.data.readers import ReadOptions
    from chef_genius.data.tokenized import load_tokenized
    from chef_genius.model.loading import load_tokenizer

    tokenizer = load_tokenizer(model)
    started = time.perf_counter()
    train = load_tokenized(csv, tokenizer, 256, 512, cache, 0, ReadOptions(), "log")
    tokenized = time.perf_counter()
    found = corpus.find_duplicates(csv, ReadOptions(), corpus.DedupOptions(), train.cache_dir)
    corpus.content_split(found.result.keys, found.result.kept, 0.02, 42)
    done = time.perf_counter()
    return {
        "seconds": round(done - started, 2),
        "tokenize_s": round(tokenized - started, 2),
        "dedup_s": round(done - tokenized, 2),
        "from_cache": train.from_cache,
        "peak_rss_mb": round(
            max(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            )
            / 1024,
            1,
        ),
        "removed": sorted(r.row for r in found.result.removed),
    }


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[0] == "--one":
        print(json.dumps(_prepare(*argv[1:4])))
        return
    rows, copies, model, work = int(argv[0]), int(argv[1]), argv[2], Path(argv[3])
    from chef_genius.devtools.planted import planted_recipes
    from chef_genius.devtools.sample_data import write_recipenlg_csv

    recipes, planted = planted_recipes(rows, copies)
    csv = work / f"planted-{rows}-{copies}.csv"
    write_recipenlg_csv(csv, recipes)
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "bench.dedup_scale", "--one", str(csv), model, str(work / "cache")],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    removed = set(runs[0].pop("removed"))
    runs[1].pop("removed")
    found = {kind: [c in removed for c, _, k in planted if k == kind] for kind in ("recased", "reordered", "reworded")}
    print(
        json.dumps(
            {
                "rows": rows + copies,
                "csv_mb": round(csv.stat().st_size / 1e6, 1),
                "first": runs[0],
                "cached": runs[1],
                "recall": {k: round(sum(v) / max(1, len(v)), 3) for k, v in found.items()},
                "generated_removed_share": round(sum(1 for r in removed if r < rows) / rows, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
