"""Generation during training under FSDP cannot deadlock: with the model sharded (FSDP2, 2 CPU processes,
gloo), every rank runs the evaluation's generation, synced, and rank 0 gets the recipes the unsharded
model writes in one process. Before this, rank 0 generated alone and waited for rank 1's shards forever:
the subprocess timeout turns such a hang into a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

import fsdp_generate_worker as worker


def test_evaluation_generation_on_a_sharded_model_matches_the_unsharded_model(tiny_model, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tests" / "train" / "fsdp_generate_worker.py"),
        str(tiny_model),
        str(tmp_path),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    sharded = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model)
        tokenizer = AutoTokenizer.from_pretrained(tiny_model)
        model.train()
        alone = worker.evaluation_texts(model, tokenizer, worker.Accelerator("NO"))
        short, long = (worker.direct_text(model, tokenizer, n, synced=False) for n in (worker.SHORT, worker.LONG))
        output, _ = sharded.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        raise AssertionError("generation on the sharded model hung") from None
    finally:
        if sharded.poll() is None:  # the workers' own watchdog should have ended them already
            sharded.terminate()  # torchrun ends its workers on SIGTERM
            sharded.communicate()
    assert "Timeout (0:01:00)!" not in output, "generation on the sharded model hung:\n" + output[-3000:]
    assert sharded.returncode == 0, output[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1))

    assert long.startswith(short) and len(long) > len(short)  # rank 0 ends its direct generation earlier
    assert alone["same_rng"] and rank0["same_rng"] and rank1["same_rng"]
    assert rank0["training_mode"] and rank1["training_mode"]
    assert {r["type"] for r in alone["records"]} == {"generation", "samples"}
    for key in ("preview", "final", "records"):
        assert rank0[key] == alone[key], key
    assert rank0["metrics_agree"] and rank1["metrics_agree"]  # rank 0's recipe metrics reached rank 1
    assert rank1["preview"] is None and rank1["final"] is None and rank1["records"] == []
    assert (rank0["direct"], rank1["direct"]) == (short, long)
