"""Lean loss against the plain logits cross-entropy: peak memory and time of one forward + backward.

    python -m bench.loss --shape flan-t5-large --batch 8 --target 512 --repeats 3
    python -m bench.loss --shape tiny --batch 8 --target 128 --repeats 5

``flan-t5-large`` times the part the lean loss changes (decoder hidden states -> vocabulary projection
-> cross-entropy -> gradients) at FLAN-T5-large's width and vocabulary (1,024 x 32,128); ``tiny`` a
whole training step of the tiny model. A quarter of the target positions are padding, as in
length-grouped batches. Each measurement runs in a fresh process (peak RSS is a process's lifetime
maximum), the two contenders alternated; medians and the spread (min..max) are printed with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _batch(batch: int, target: int, vocab: int, d_model: int):
    import torch

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(2, vocab, (batch, target), generator=g)
    for row in range(batch):  # ragged: rows 0..B-1 keep 100% .. 50% of the positions (about 3/4 overall)
        labels[row, target - (row * target) // (2 * batch) :] = -100
    hidden = torch.randn(batch, target, d_model, generator=g)
    return hidden, labels


def _one(shape: str, contender: str, batch: int, target: int) -> dict:
    import torch
    import torch.nn.functional as F

    from chef_genius.model import lean_loss

    torch.manual_seed(0)
    if shape == "flan-t5-large":
        vocab, d_model = 32128, 1024
        hidden, labels = _batch(batch, target, vocab, d_model)
        head = torch.nn.Linear(d_model, vocab, bias=False)
        hidden.requires_grad_(True)

        def step():
            if contender == "plain":
                loss = F.cross_entropy(
                    head(hidden).float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
                )
            else:
                positions, targets = lean_loss.label_positions(labels, -100)
                rows = hidden.flatten(0, 1).index_select(0, positions)
                loss = lean_loss.cross_entropy_sum(rows, head.weight, targets)
            loss.backward()
    else:
        from bench.common import build_model_folder
        from chef_genius.model.loading import load_model
        import tempfile
        from pathlib import Path

        model = load_model(build_model_folder(Path(tempfile.mkdtemp(prefix="chef-loss-")), "tiny"))
        vocab = model.config.vocab_size
        _, labels = _batch(batch, target, vocab, 1)
        inputs = {
            "input_ids": torch.randint(2, vocab, (batch, 64)),
            "attention_mask": torch.ones(batch, 64, dtype=torch.long),
            "decoder_input_ids": torch.randint(2, vocab, (batch, target)),
        }
        head = lean_loss.install(model) if contender == "lean" else None

        def step():
            if head is None:
                logits = model(**inputs).logits
                loss = F.cross_entropy(
                    logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
                )
            else:
                positions, targets = lean_loss.label_positions(labels, -100)
                with lean_loss.targets(head, positions, targets):
                    loss = model(**inputs).logits
            loss.backward()

    step()  # warm up (allocator, kernels) before the peak is read
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    step()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_rss_mb": peak / 1024, "rss_growth_mb": (peak - before) / 1024}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.loss", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shape", choices=("tiny", "flan-t5-large"), default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--target", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", choices=("plain", "lean"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_one(args.shape, args.child, args.batch, args.target)))
        return 0
    runs = {"plain": [], "lean": []}
    for _ in range(args.repeats):
        for contender in runs:  # alternated
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.loss",
                    "--shape",
                    args.shape,
                    "--batch",
                    str(args.batch),
                    "--target",
                    str(args.target),
                    "--child",
                    contender,
                ],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ},
            )
            runs[contender].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(contender, runs[contender][-1], os.getloadavg(), file=sys.stderr, flush=True)
    summary = {
        "shape": args.shape,
        "batch": args.batch,
        "target": args.target,
        "repeats": args.repeats,
        "load": os.getloadavg(),
    }
    for contender, results in runs.items():
        for key in ("seconds", "peak_rss_mb"):
            values = [r[key] for r in results]
            summary[f"{contender}_{key}"] = {
                "median": round(statistics.median(values), 3),
                "min": round(min(values), 3),
                "max": round(max(values), 3),
            }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
