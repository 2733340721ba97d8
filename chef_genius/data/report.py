"""What is in the training data: rows read, kept, skipped, duplicates, lengths and truncation.

One summary (``summarize``: a plain dict), printed by training once (``summary_lines``) and by
``cli/inspect_data.py`` (also as ``--json``, and as PNG histograms: ``write_histograms``).

Truncation: a recipe's input or target is *cut* when its token length before truncation exceeds
``--max-source-length`` / ``--max-target-length``. When more than ``CUT_WARN_SHARE`` (2 %) of the
training recipes are cut on either side, a warning suggests the length that would keep at least 99 %
whole (``SUGGEST_PERCENTILE``, rounded up to a multiple of 8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chef_genius.data.training_set import duplicate_counts

CUT_WARN_SHARE = 0.02
SUGGEST_PERCENTILE = 99
PERCENTILES = (50, 90, 95, 99, 100)
SIDES = (("input", "source_full_len"), ("target", "target_full_len"))


def full_lengths(dataset, rows) -> dict[str, np.ndarray]:
    """Untruncated token lengths of ``rows`` of a tokenized dataset, per side."""
    read = dataset.column if hasattr(dataset, "column") else dataset.__getitem__  # ArrowRows: one numpy array
    return {side: np.asarray(read(column), dtype=np.int64)[np.asarray(rows, dtype=np.int64)] for side, column in SIDES}


def lengths_report(lengths: dict[str, np.ndarray], max_source: int, max_target: int) -> dict:
    """Per side: the max length, how many recipes it cuts and their share, the length percentiles."""
    out = {}
    for side, limit in (("input", max_source), ("target", max_target)):
        values = lengths[side]
        cut = int((values > limit).sum())
        out[side] = {
            "max_length": limit,
            "cut": cut,
            "cut_share": round(cut / max(1, len(values)), 4),
            "percentiles": {str(p): int(np.percentile(values, p)) if len(values) else 0 for p in PERCENTILES},
            "suggested": suggested_length(values),
        }
    return out


def suggested_length(values: np.ndarray) -> int:
    """The length that keeps ``SUGGEST_PERCENTILE`` % of the recipes whole, rounded up to 8."""
    if not len(values):
        return 0
    return int(-(-np.percentile(values, SUGGEST_PERCENTILE, method="higher") // 8) * 8)


def truncation_warnings(report: dict) -> list[str]:
    flags = {"input": "--max-source-length", "target": "--max-target-length"}
    out = []
    for side, r in report.items():
        if r["cut_share"] > CUT_WARN_SHARE:
            out.append(
                f"{r['cut_share']:.1%} of the training recipes' {side}s are cut at {flags[side]} "
                f"{r['max_length']} (more than {CUT_WARN_SHARE:.0%}); {flags[side]} {r['suggested']} would "
                f"keep {SUGGEST_PERCENTILE}% whole"
            )
    return out


def summarize(path, stats: dict, found, mode: str, train_rows: int, eval_rows: int, lengths: dict) -> dict:
    """The data summary: ``stats`` (ReadStats.to_dict), ``found`` (corpus.FileDedup or None)."""
    removed = found.result.counts() if found is not None else None
    return {
        "data": str(path),
        "rows_read": stats.get("rows"),
        "usable": stats.get("kept"),
        "skipped": dict(stats.get("skipped") or {}),
        "dedup": {
            "mode": mode,
            "threshold": found.result.threshold if found is not None else None,
            "found": removed,
            "removed_from_training": _removed_from_training(removed, mode),
        },
        "training_recipes": train_rows,
        "validation_recipes": eval_rows,
        "lengths": lengths,
    }


def summarize_set(ts, train_rows: int, eval_rows: int, lengths: dict) -> dict:
    """The data summary of a ``training_set.TrainingSet``: ``summarize``'s of its one source, or the
    sums over several (``data`` their list; duplicates across sources counted as ``exact_across`` /
    ``near_across``)."""
    if len(ts.sources) == 1:
        d = ts.sources[0]
        return summarize(d.source.path, d.tokenized.stats, d.found, ts.mode, train_rows, eval_rows, lengths)
    skipped: dict = {}
    for d in ts.sources:
        for reason, n in (d.tokenized.stats.get("skipped") or {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
    found = None
    if ts.sources[0].found is not None:
        found = {"exact": 0, "near": 0, "held_out_twin": 0, "exact_across": 0, "near_across": 0}
        for d in ts.sources:
            for kind, n in (duplicate_counts(d) or {}).items():
                found[kind] += n
    return {
        "data": [d.source.spelled() for d in ts.sources],
        "rows_read": sum(d.tokenized.stats.get("rows") or 0 for d in ts.sources),
        "usable": sum(d.tokenized.stats.get("kept") or 0 for d in ts.sources),
        "skipped": skipped,
        "dedup": {
            "mode": ts.mode,
            "threshold": ts.sources[0].found.result.threshold if found is not None else None,
            "found": found,
            "removed_from_training": _removed_from_training(found, ts.mode),
        },
        "training_recipes": train_rows,
        "validation_recipes": eval_rows,
        "lengths": lengths,
    }


def _removed_from_training(removed: dict | None, mode: str) -> int:
    """The rows training leaves out: every duplicate found (``remove``), else the held-out twins only."""
    if removed is None:  # --dedup off: none looked for
        return 0
    return sum(removed.values()) if mode == "remove" else removed.get("held_out_twin", 0)


def summary_lines(summary: dict) -> list[str]:
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(summary["skipped"].items())) or "none"
    data = summary["data"]
    shown = " + ".join(data) if isinstance(data, list) else data
    lines = [f"data {shown}: {summary['rows_read']} rows read, {summary['usable']} usable, skipped: {skipped}"]
    d = summary["dedup"]
    if d["found"] is None:
        lines.append("duplicates: not looked for (--dedup off)")
    else:
        found = d["found"]
        verb = "removed" if d["mode"] == "remove" else "found (kept for training: --dedup keep)"
        lines.append(
            f"duplicates {verb}: {found['exact']} exact, {found['near']} near (similarity >= "
            f"{d['threshold']:.2f}); {found['held_out_twin']} twins of --eval-data recipes removed"
            + (
                f"; across sources: {found['exact_across']} exact, {found['near_across']} near twins of an "
                "earlier source's recipe"
                if "exact_across" in found
                else ""
            )
        )
    lines.append(f"{summary['training_recipes']} training and {summary['validation_recipes']} validation recipes")
    for side, r in (summary["lengths"] or {}).items():
        p = r["percentiles"]
        lines.append(
            f"{side} tokens: median {p['50']}, p90 {p['90']}, p99 {p['99']}, max {p['100']}; "
            f"{r['cut']} ({r['cut_share']:.1%}) cut at {r['max_length']}"
        )
    return lines


def write_histograms(lengths: dict[str, np.ndarray], report: dict, out_dir: Path) -> list[Path]:
    """One PNG per side: the untruncated token lengths, the max length marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for side, values in lengths.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(values, bins=min(60, max(5, len(set(values.tolist())))), color="#4a7ab5")
        ax.axvline(
            report[side]["max_length"],
            color="#c0392b",
            linestyle="--",
            label=f"max length {report[side]['max_length']} ({report[side]['cut_share']:.1%} cut)",
        )
        ax.set_xlabel(f"{side} tokens (before truncation)")
        ax.set_ylabel("recipes")
        ax.legend()
        fig.tight_layout()
        files.append(out_dir / f"lengths_{side}.png")
        fig.savefig(files[-1], dpi=100)
        plt.close(fig)
    return files
