"""``python -m bench --smoke`` runs every benchmark and prints well-formed JSON lines (no speed target
is checked here: benchmarks are not timed tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXPECTED = {"machine", "throughput_vs_seq2seqtrainer", "throughput_vs_seq2seqtrainer_grouped", "loop_efficiency",
            "save_vs_raw", "async_save_stall", "resume_startup", "preprocess_cached"}


def test_bench_smoke_prints_one_json_object_per_benchmark(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--work-dir", str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]  # every stdout line is JSON
    assert {r["name"] for r in records} == EXPECTED
    for record in records:
        assert {"name", "ours", "baseline", "ratio", "unit"} <= record.keys()
        assert "error" not in record
        if record["name"] != "machine":
            assert record["ours"] is not None and record["baseline"] is not None and record["unit"]
    preprocess = next(r for r in records if r["name"] == "preprocess_cached")
    assert preprocess["cached_from_cache"] and preprocess["rows"] < 1_000_000 and "note" in preprocess
