"""``python -m bench.rows [ROWS]``: reading the tokenized cache, pyarrow alone (``ArrowRows``, what the
trainer uses) against ``datasets.Dataset`` over the same Arrow files: every row once through
``RecipeDataset`` (what a loader worker does) and the length columns (what the sampler reads at start).
Alternated, 3 rounds, medians; one JSON line. Needs ``datasets`` (the comparison's other side)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rows = int(argv[0]) if argv else 20_000
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    import datasets

    from chef_genius.data.tokenized import RecipeDataset, load_tokenized
    from chef_genius.model.loading import load_tokenizer, quiet_transformers
    from chef_genius.model.tiny import build_tiny

    from .common import write_recipes_csv

    quiet_transformers()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="chef-bench-rows-") as scratch:
        work = Path(scratch)
        tokenizer = load_tokenizer(str(build_tiny(work / "model")))
        tokenized = load_tokenized(write_recipes_csv(work / "rows.csv", rows), tokenizer, 256, 512, work / "cache")
        arrow = tokenized.dataset
        opened = [datasets.Dataset.from_file(str(p)) for p in arrow.paths]
        reference = opened[0] if len(opened) == 1 else datasets.concatenate_datasets(opened)
        times = {"arrow_rows": {"rows_s": [], "lengths_s": []}, "datasets": {"rows_s": [], "lengths_s": []}}
        for round_ in range(3):
            for name, table in (("arrow_rows", arrow), ("datasets", reference))[:: 1 if round_ % 2 == 0 else -1]:
                began = time.perf_counter()
                data = RecipeDataset(table)
                data.lengths()
                times[name]["lengths_s"].append(time.perf_counter() - began)
                began = time.perf_counter()
                for i in range(len(data)):
                    data[i]
                times[name]["rows_s"].append(time.perf_counter() - began)
    medians = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    print(
        json.dumps(
            {
                "name": "cache_row_reads",
                "rows": rows,
                "parts": len(arrow.paths),
                "ours": medians["arrow_rows"]["rows_s"],
                "baseline": medians["datasets"]["rows_s"],
                "ratio": medians["arrow_rows"]["rows_s"] / medians["datasets"]["rows_s"],
                "unit": "s, every row once",
                "lengths_s": {n: m["lengths_s"] for n, m in medians.items()},
                "runs": times,
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
