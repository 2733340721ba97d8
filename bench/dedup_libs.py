"""MinHash + LSH libraries compared on generated recipes with planted duplicates, and the threshold sweep.

``python -m bench.dedup_libs ROWS COPIES`` runs each library in its own subprocess (so its peak RSS is
its own) over the same recipe texts (``devtools/planted.py``: ROWS generated recipes, then COPIES
re-cased, reordered and reworded copies), with the same shingles, 128 permutations and the same greedy
pass as ``data/dedup.py`` (each row against the rows kept before it), and prints one JSON line per
library, then the agreement and the threshold sweep. ``datasketch`` is needed only here.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def _texts(rows: int, copies: int):
    from chef_genius.data.dedup import content_key, normal_form
    from chef_genius.data.recipes import format_target, recipe_from_fields
    from chef_genius.devtools.planted import planted_recipes

    recipes, planted = planted_recipes(rows, copies)
    normals = [
        normal_form(format_target(recipe_from_fields(r["title"], r["ingredients"], r["directions"]))) for r in recipes
    ]
    return normals, [content_key(n) for n in normals], planted


def _run(lib: str, rows: int, copies: int, threshold: float) -> dict:
    from chef_genius.data.dedup import MINHASH_SEED, NUM_BANDS, NUM_PERM, shingles

    normals, keys, _ = _texts(rows, copies)
    grams = [shingles(n) for n in normals]
    started = time.perf_counter()
    if lib == "rensa":
        from rensa import RMinHash, RMinHashLSH

        hashes = []
        for g in grams:
            m = RMinHash(NUM_PERM, MINHASH_SEED)
            m.update(g)
            hashes.append(m)
        lsh = RMinHashLSH(threshold, NUM_PERM, NUM_BANDS)
    else:
        from datasketch import MinHash, MinHashLSH

        hashes = [MinHash(num_perm=NUM_PERM, seed=1) for _ in grams]
        for m, g in zip(hashes, grams, strict=True):
            m.update_batch([s.encode() for s in g])
        lsh = MinHashLSH(num_perm=NUM_PERM, params=(NUM_BANDS, NUM_PERM // NUM_BANDS))  # the same banding
    hashed = time.perf_counter()
    seen, removed = {}, {}
    for row, (key, m) in enumerate(zip(keys, hashes, strict=True)):
        if key in seen:
            removed[row] = (seen[key], 1.0)
            continue
        best = None
        for other in lsh.query(m):
            sim = m.jaccard(hashes[other])
            if sim >= threshold and (best is None or sim > best[1]):
                best = (other, sim)
        if best:
            removed[row] = best
            continue
        seen[key] = row
        lsh.insert(row, m)
    done = time.perf_counter()
    return {
        "lib": lib,
        "rows": len(normals),
        "minhash_s": round(hashed - started, 2),
        "lsh_pass_s": round(done - hashed, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "removed": sorted(removed),
    }


def _scores(removed: set, rows: int, planted) -> dict:
    by_kind = {}
    for copy, _, kind in planted:
        hit, total = by_kind.get(kind, (0, 0))
        by_kind[kind] = (hit + (copy in removed), total + 1)
    false = sum(1 for r in removed if r < rows)
    return {
        "recall": {k: round(h / t, 3) for k, (h, t) in by_kind.items()},
        "originals_removed": false,
        "originals_removed_share": round(false / rows, 4),
    }


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--one":
        lib, rows, copies, threshold = argv[1], int(argv[2]), int(argv[3]), float(argv[4])
        print(json.dumps(_run(lib, rows, copies, threshold)))
        return
    rows, copies = (int(a) for a in argv[:2])
    thresholds = [float(t) for t in argv[2:]] or [0.7]
    from chef_genius.devtools.planted import planted_recipes

    planted = planted_recipes(rows, copies)[1]
    for threshold in thresholds:
        results = {}
        for lib in ("rensa", "datasketch"):
            out = subprocess.run(
                [sys.executable, "-m", "bench.dedup_libs", "--one", lib, str(rows), str(copies), str(threshold)],
                capture_output=True,
                text=True,
                check=True,
            )
            results[lib] = json.loads(out.stdout.strip().splitlines()[-1])
        a, b = set(results["rensa"]["removed"]), set(results["datasketch"]["removed"])
        for r in results.values():
            removed = set(r.pop("removed"))
            print(json.dumps({**r, "threshold": threshold, **_scores(removed, rows, planted)}))
        print(
            json.dumps(
                {
                    "threshold": threshold,
                    "agreement_jaccard": round(len(a & b) / max(1, len(a | b)), 4),
                    "only_rensa": len(a - b),
                    "only_datasketch": len(b - a),
                }
            )
        )


if __name__ == "__main__":
    main()
