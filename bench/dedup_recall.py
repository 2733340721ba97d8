"""Recall of planted near-duplicates against distinct recipes removed, by shingling and threshold.

``python -m bench.dedup_recall ROWS [SHINGLING,... [THRESHOLD,...]]`` prints one JSON line per
(corpus, shingling, threshold):

- ``distinct``: ROWS rows of ``devtools/planted.planted_stream`` (distinct originals, 10 % of the rows
  re-cased, reordered or reworded copies of earlier ones): recall of each kind of copy, and the share
  of the originals removed (false removals: the originals are distinct by construction);
- ``template``: ``planted_recipes(2000, 300)`` (the sample generator: many template twins among
  its originals, so its "originals removed" are mostly true near-twins, an upper bound);
- ``sample``: rows removed from the bundled 400-recipe sample (which must stay 0: the golden curve).

The decision is ``data/dedup.decide``, the one training uses; the shingling is set per call.
"""

from __future__ import annotations

import json
import sys

SHINGLINGS = ("word3", "word2", "char5")
THRESHOLDS = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85)


def _target(r: dict) -> str:
    from chef_genius.data.recipes import format_target, recipe_from_fields

    return format_target(recipe_from_fields(r["title"], r["ingredients"], r["directions"]))


def _corpora(rows: int):
    from chef_genius.data.readers import ReadOptions, ReadStats, read_examples
    from chef_genius.devtools.planted import planted_recipes, planted_stream

    stream = list(planted_stream(rows, 0.1, seed=1))
    yield "distinct", [_target(r) for r, _ in stream], [(i, p[0], p[1]) for i, (_, p) in enumerate(stream) if p]
    recipes, planted = planted_recipes(2000, 300)
    yield "template", [_target(r) for r in recipes], planted
    sample = [e["target"] for e in read_examples("data/sample_recipes.csv", ReadStats(), ReadOptions())]
    yield "sample", sample, []


def main(argv=None) -> None:
    from chef_genius.data import dedup

    argv = sys.argv[1:] if argv is None else argv
    rows = int(argv[0])
    shinglings = argv[1].split(",") if len(argv) > 1 else SHINGLINGS
    thresholds = [float(t) for t in argv[2].split(",")] if len(argv) > 2 else THRESHOLDS
    for name, targets, planted in _corpora(rows):
        copies = {c for c, _, _ in planted}
        originals = len(targets) - len(copies)
        normals = [dedup.normal_form(t) for t in targets]
        for kind in shinglings:
            keys, digests = dedup.signatures(targets, normals, kind)
            for threshold in thresholds:
                removed = {r.row for r in dedup.decide(keys, digests, threshold).removed}
                recall = {
                    k: round(
                        sum(c in removed for c, _, kk in planted if kk == k)
                        / max(1, sum(kk == k for *_, kk in planted)),
                        3,
                    )
                    for k in ("recased", "reordered", "reworded")
                }
                false = len(removed - copies)
                print(
                    json.dumps(
                        {
                            "corpus": name,
                            "shingling": kind,
                            "threshold": threshold,
                            "recall": recall,
                            "originals_removed": false,
                            "share": round(false / originals, 4),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
