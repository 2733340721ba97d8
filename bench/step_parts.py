"""``python -m bench.step_parts``: where a training step's time goes, ours against ``Seq2SeqTrainer``'s
model call, on the same fixed batches of recipes with RecipeNLG-like length skew.

For each batch (``--batch`` rows in our epoch order, padded to 8 as both trainers do), three forward +
backward passes of the same model, alternated, ``--repeats`` rounds, medians:

- ``body``: encoder and decoder only (the decoder's output summed: no vocabulary projection);
- ``ours``: our trainer's loss, the lean head (``model/lean_loss.py``): only the labelled positions
  are projected to the 32,128 words, 1,024 at a time;
- ``hf``: ``model(input_ids, attention_mask, labels).loss``, what ``Seq2SeqTrainer`` calls: every
  padded target position projected, fp32 cross-entropy over all of them.

``ours - body`` and ``hf - body`` are the head and the loss; the projected positions of each say how
much of the head's work is padding. One JSON line. The optimizer step is left out (the same for both).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.step_parts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shape", default="flan-head", help="a bench model architecture (default flan-head)")
    p.add_argument("--rows", type=int, default=60, help="recipes generated (with --skewed lengths)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--batches", type=int, default=3, help="batches timed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    import numpy as np
    import torch

    from chef_genius.data.sampler import epoch_order
    from chef_genius.data.tokenized import LABEL_PAD, Collator, RecipeDataset, load_tokenized
    from chef_genius.model import lean_loss
    from chef_genius.model.loading import load_model, load_tokenizer, quiet_transformers

    from .common import build_model_folder, write_recipes_csv

    quiet_transformers()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="chef-bench-parts-") as scratch:
        work = Path(scratch)
        folder = build_model_folder(work, args.shape)
        tokenizer = load_tokenizer(str(folder))
        rows = load_tokenized(
            write_recipes_csv(work / "r.csv", args.rows, seed=1, skew=True), tokenizer, 256, 512, work / "cache"
        ).dataset
        data = RecipeDataset(rows)
        order = epoch_order(len(data), 42, 0, data.lengths(), 1024)
        collate = Collator(tokenizer.pad_token_id)
        batches = [
            collate([data[int(i)] for i in order[k * args.batch : (k + 1) * args.batch]]) for k in range(args.batches)
        ]
        model = load_model(folder)
        model.train()
        torch.manual_seed(0)

    def inputs(b):
        return {k: b[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")}

    def body(b):
        encoded = model.encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        decoded = model.decoder(
            input_ids=b["decoder_input_ids"],
            encoder_hidden_states=encoded,
            encoder_attention_mask=b["attention_mask"],
            use_cache=False,
        ).last_hidden_state
        decoded.sum().backward()

    def hf(b):
        model(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"], use_cache=False
        ).loss.backward()

    head = lean_loss.install(model)  # unarmed it is the plain linear head (body and hf), armed the lean loss

    def ours(b):
        positions, targets = lean_loss.label_positions(b["labels"], LABEL_PAD)
        with lean_loss.targets(head, positions, targets):
            model(**inputs(b), use_cache=False).logits.backward()

    times = {"body": [], "ours": [], "hf": []}
    for round_ in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, fn in (("body", body), ("ours", ours), ("hf", hf))[:: 1 if round_ % 2 else -1]:
            began = time.perf_counter()
            for b in batches:
                fn(b)
                model.zero_grad(set_to_none=True)
            if round_:
                times[name].append(time.perf_counter() - began)
    medians = {k: statistics.median(v) for k, v in times.items()}
    labelled = sum(int((b["labels"] != LABEL_PAD).sum()) for b in batches)
    padded = sum(b["labels"].numel() for b in batches)
    print(
        json.dumps(
            {
                "name": "step_parts",
                "shape": args.shape,
                "batch": args.batch,
                "batches": args.batches,
                "repeats": args.repeats,
                "threads": args.threads,
                "seconds": medians,
                "spread": {k: [round(min(v), 3), round(max(v), 3)] for k, v in times.items()},
                "head_and_loss_s": {"ours": medians["ours"] - medians["body"], "hf": medians["hf"] - medians["body"]},
                "projected_positions": {"ours": labelled, "hf": padded},
                "padding_share": 1 - labelled / padded,
                "target_widths": [int(b["labels"].shape[1]) for b in batches],
                "target_tokens_p50_p95_max": [
                    float(np.percentile(data.source_target_lengths()[1], q)) for q in (50, 95, 100)
                ],
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
