"""A RecipeNLG-scale mixture through the training command, to its first step: time, peak memory, recall.

``python -m bench.corpus_scale RECIPENLG_ROWS FOODCOM_ROWS MODEL WORK`` writes two files of generated
recipes (``devtools/planted``): RecipeNLG's layout with 10 % planted copies of its own earlier rows
(re-cased, reordered, reworded in turn), and Food.com's layout (``RAW_recipes.csv``) with 5 % copies of
its own rows and 5 % copies of RecipeNLG rows (the same recipe in the other layout, altered the same
ways). Then it runs ``cli/complete_optimized_training.py --data BOTH --max-steps 1`` twice with MODEL
(the tiny test model: its tokenizer, not FLAN-T5's, so tokenizing is cheaper than a real run's): the
first run (read, tokenize, cache, deduplicate within and across the files, split) and a second run in
a fresh run folder on the same cache. Prints one JSON line: each run's wall seconds and peak RSS (the
largest single process: ``ru_maxrss`` of the children), the recall of each kind of planted copy from
the run's ``removed_duplicates.csv``, the share of distinct recipes removed, and the load average
before and after (the machine is shared). The training step itself is one step of the tiny model.
"""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from chef_genius.devtools.planted import KINDS, _altered, distinct_recipe, planted_stream, write_foodcom_csv
from chef_genius.devtools.sample_data import write_recipenlg_csv

CROSS_SHARE = 0.05
OWN_SHARE = 0.05
RECIPENLG_SEED = 1
# distinct_recipe(i, seed) draws from Random(seed * 1_000_003 + i): with seed 2, Food.com's recipe i would be
# RecipeNLG's recipe i + 1_000_003, an exact twin, once RecipeNLG has a million recipes; 9 keeps them apart
FOODCOM_SEED = 9


def _foodcom_stream(rows: int, recipenlg_originals: list[int], planted: list):
    """Food.com rows: distinct recipes (FOODCOM_SEED), copies of its own earlier ones and of RecipeNLG's."""
    rng = random.Random(7)
    own: list[int] = []
    for row in range(rows):
        draw = rng.random()
        kind = KINDS[row % len(KINDS)]
        if draw < CROSS_SHARE:
            which = rng.randrange(len(recipenlg_originals))
            planted.append(("foodcom", row, "recipenlg", recipenlg_originals[which], kind))
            yield _altered(distinct_recipe(which, RECIPENLG_SEED), kind, rng, row)
        elif own and draw < CROSS_SHARE + OWN_SHARE:
            which = rng.randrange(len(own))
            planted.append(("foodcom", row, "foodcom", own[which], kind))
            yield _altered(distinct_recipe(which, FOODCOM_SEED), kind, rng, row)
        else:
            own.append(row)
            yield distinct_recipe(len(own) - 1, FOODCOM_SEED)


def write_corpora(work: Path, recipenlg_rows: int, foodcom_rows: int) -> tuple[Path, Path, list]:
    planted: list[tuple[str, int, str, int, str]] = []
    originals: list[int] = []

    def recipenlg():
        for row, (recipe, copy) in enumerate(planted_stream(recipenlg_rows, 0.1, RECIPENLG_SEED)):
            if copy is None:
                originals.append(row)
            else:
                planted.append(("recipenlg", row, "recipenlg", copy[0], copy[1]))
            yield recipe

    first, second = work / "recipenlg.csv", work / "RAW_recipes.csv"
    write_recipenlg_csv(first, recipenlg())
    write_foodcom_csv(second, _foodcom_stream(foodcom_rows, originals, planted))
    return first, second, planted


def _run(files: list[Path], model: str, out: Path, cache: Path) -> dict:
    command = [sys.executable, "cli/complete_optimized_training.py", "--data", *map(str, files)]
    command += ["--pretrained-model", model, "--model-output", str(out), "--cache-dir", str(cache)]
    command += [
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--mixed-precision",
        "no",
        "--eval-steps",
        "1000",
        "--eval-max-samples",
        "16",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    out.with_suffix(".log").write_text(done.stderr, encoding="utf-8")  # beside the run folder, for the phases
    if done.returncode != 0:
        raise SystemExit(f"training exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    return {"seconds": round(seconds, 1)}


def _recall(run: Path, files: dict[str, Path], planted: list, rows: dict[str, int]) -> dict:
    name_of = {str(path.resolve()): name for name, path in files.items()}
    removed = set()
    with open(run / "removed_duplicates.csv", encoding="utf-8", newline="") as handle:
        for line in csv.DictReader(handle):
            removed.add((name_of.get(str(Path(line["file"]).resolve()), line["file"]), int(line["record"]) - 1))
    found: dict[str, list[int]] = {}
    for file, row, twin_file, _, kind in planted:
        key = f"{kind}_{'across' if file != twin_file else 'within'}"
        found.setdefault(key, [0, 0])
        found[key][0] += (file, row) in removed
        found[key][1] += 1
    copies = {(file, row) for file, row, *_ in planted}
    distinct = sum(rows.values()) - len(copies)
    wrongly = len(removed - copies)
    return {
        "recall": {k: round(hit / total, 4) for k, (hit, total) in sorted(found.items())},
        "copies": len(copies),
        "removed": len(removed),
        "distinct_removed": wrongly,
        "distinct_removed_share": round(wrongly / distinct, 5),
    }


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    recipenlg_rows, foodcom_rows, model, work = int(argv[0]), int(argv[1]), argv[2], Path(argv[3])
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    first, second, planted = write_corpora(work, recipenlg_rows, foodcom_rows)
    written = round(time.perf_counter() - started, 1)
    load_before = os.getloadavg()
    runs = {name: _run([first, second], model, work / name, work / "cache") for name in ("first", "cached")}
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    files = {"recipenlg": first, "foodcom": second}
    rows = {"recipenlg": recipenlg_rows, "foodcom": foodcom_rows}
    print(
        json.dumps(
            {
                "rows": rows,
                "mb": {name: round(path.stat().st_size / 1e6, 1) for name, path in files.items()},
                "generate_s": written,
                "runs": runs,
                "peak_rss_mb": round(peak / 1024),
                **_recall(work / "first", files, planted, rows),
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in os.getloadavg()],
                "cpus": len(os.sched_getaffinity(0)),
            }
        )
    )


if __name__ == "__main__":
    main()
