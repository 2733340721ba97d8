"""What every benchmark shares: the profile (sizes per mode), the model folder, the data, the output."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# FLAN-T5-large's architecture (google/flan-t5-large config.json), written here because no model hub
# is reachable: weights are initialised from it, which is all a speed benchmark needs.
FLAN_T5_LARGE = dict(
    vocab_size=32128,
    d_model=1024,
    d_kv=64,
    d_ff=2816,
    num_layers=24,
    num_decoder_layers=24,
    num_heads=16,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.1,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    layer_norm_epsilon=1e-6,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)


@dataclass
class Profile:
    mode: str  # smoke | quick | full
    model_config: str  # tiny | flan-t5-large
    rows: int  # recipes in the training CSV
    batch_size: int
    warmup_steps: int  # steps run before timing starts (also the logging interval)
    timed_steps: int
    preprocess_rows: int
    workers: int
    bf16: bool
    compile: bool
    max_source: int = 256
    max_target: int = 512
    # the throughput benchmark: each contender runs ``repeats`` times, alternated; every run validates on
    # the same ``eval_max_samples`` held-out recipes and saves a checkpoint every ``eval_every`` steps
    # (``warmup_steps`` and ``timed_steps`` are multiples of it)
    repeats: int = 1
    eval_every: int = 1
    eval_max_samples: int = 8
    # torch threads of each throughput run (0: torch's default). One on CPU: the tiny model's matrices
    # are too small to share among threads, and on 2 shared cores two threads made a run many times slower
    threads: int = 0
    # the whole-trainer comparisons: each contender trains two whole epochs of a small split of its own
    # ``epoch_rows``-recipe CSV and is timed over the second (every recipe exactly once), validating and
    # saving ``evals_per_epoch`` times in it
    epoch_rows: int = 40
    evals_per_epoch: int = 1
    # the checkpoint benchmarks' repetitions (None: their own defaults; 1 with --smoke or --budget-s)
    checkpoint_repeats: int | None = None
    # which throughput comparisons run: the loop's (identical batches, a window) and the whole trainer's
    # (whole epochs of three contenders, on recipes with RecipeNLG's length skew when ``skewed``)
    loop: bool = True
    whole_epochs: bool = True
    skewed: bool = False


def make_profile(mode: str, model_config: str, gpu: bool) -> Profile:
    large = model_config == "flan-t5-large"
    if mode == "smoke":
        return Profile(
            mode,
            model_config,
            64,
            4,
            1,
            2,
            300,
            0,
            gpu,
            gpu,
            32,
            64,
            repeats=1,
            eval_every=1,
            eval_max_samples=8,
            threads=0 if gpu else 1,
            epoch_rows=40,
            evals_per_epoch=2,
            checkpoint_repeats=1,
        )
    if gpu:  # FLAN-T5-large steps and 9 GB saves are slow: one run each (--repeats N for more); 25-40 minutes
        # in all on an H100 by estimate (bench/__main__.py: GPU_COST_S); --budget-s 480 fits 8
        repeats, warmup, timed = (1, 10, 10) if mode == "quick" else (1, 10, 20)
        return Profile(
            mode,
            model_config,
            20000,
            16 if large else 8,
            warmup,
            timed,
            50_000,
            2,
            gpu,
            gpu,
            repeats=repeats,
            eval_every=10,
            eval_max_samples=64,
            epoch_rows=200,
            evals_per_epoch=1,
        )
    if mode == "quick" and model_config == "flan-head":
        # a step of the proxy costs about 100 MFLOP per target token in its head alone (30 times the tiny
        # model's): half the batch, fewer steps and recipes than the tiny model's quick run
        return Profile(
            mode,
            model_config,
            2000,
            4,
            4,
            8,
            50_000,
            1,
            gpu,
            gpu,
            repeats=3,
            eval_every=4,
            eval_max_samples=8,
            threads=1,
            epoch_rows=60,
            evals_per_epoch=1,
        )
    if mode == "quick":
        return Profile(
            mode,
            model_config,
            2000,
            8,
            5,
            20,
            50_000,
            1,
            gpu,
            gpu,
            repeats=3,
            eval_every=5,
            eval_max_samples=16,
            threads=1,
            epoch_rows=200,
            evals_per_epoch=2,
        )
    return Profile(
        mode,
        model_config,
        20000,
        8 if not large else 16,
        10,
        40,
        1_000_000,
        2,
        gpu,
        gpu,
        repeats=5,
        eval_every=10,
        eval_max_samples=32,
        threads=1,
        epoch_rows=1000,
        evals_per_epoch=4,
    )


def emit(record: dict) -> None:
    """One JSON object per line on stdout, flushed, with the fields every result has."""
    record = dict(record)
    ours, baseline = record.get("ours"), record.get("baseline")
    if "ratio" not in record:
        record["ratio"] = (ours / baseline) if ours is not None and baseline else None
    for key in ("ours", "baseline", "ratio"):
        if isinstance(record.get(key), float):
            record[key] = round(record[key], 4)
    print(json.dumps(record), flush=True)


def machine() -> dict:
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# the architectures of google/flan-t5-small and -base (their config.json), for checkpoints of a real size
SHAPES = {
    "flan-t5-small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
    "flan-t5-base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12),
    # the CPU proxy (the default CPU model of --quick and the full run): FLAN-T5's 32,128-token untied head
    # at t5-small's width, with two layers each side, so the head and the loss weigh in a step about as
    # they do in FLAN-T5-large on a GPU (where the lean loss and the token budget matter) while a step
    # stays around a second on one CPU thread
    "flan-head": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=2, num_decoder_layers=2, num_heads=8),
}


def build_model_folder(root: Path, model_config: str, name: str = "model") -> Path:
    """The tiny offline T5 (and its tokenizer) in ``root/name``; for a FLAN-T5 architecture
    (``flan-t5-large``, or a key of ``SHAPES``), the same tokenizer with a randomly initialised model
    of that architecture (32,128-token vocabulary, untied lm_head, as FLAN-T5)."""
    from chef_genius.model.tiny import build_tiny

    folder = build_tiny(root / name)
    if model_config != "tiny":
        from transformers import T5Config, T5ForConditionalGeneration

        torch.manual_seed(0)
        sizes = FLAN_T5_LARGE if model_config == "flan-t5-large" else dict(FLAN_T5_LARGE, **SHAPES[model_config])
        config = T5Config(**sizes)
        model = T5ForConditionalGeneration(config)
        model.lm_head = torch.nn.Linear(config.d_model, config.vocab_size, bias=False)
        torch.nn.init.normal_(model.lm_head.weight, std=config.d_model**-0.5)
        model.save_pretrained(folder)
    return folder


def write_recipes_csv(path: Path, rows: int, seed: int = 0, chunk: int = 20_000, skew: bool = False) -> Path:
    """A RecipeNLG-layout CSV of ``rows`` generated recipes (variable lengths), written in chunks.

    ``skew``: RecipeNLG's long tail of long directions. Each recipe's directions are followed by those of
    ``round(exp(N(0, 0.6)))`` - 1 other generated recipes (seeded): 3 in 4 keep their own only, 1 in
    5 get twice as many steps, 1 in 50 four times or more, so a batch of fixed rows holds a lot of
    padding behind its longest recipe, as on the real corpus."""
    import csv
    import random

    from chef_genius.devtools.sample_data import generate_recipes

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 7919)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["", "title", "ingredients", "directions", "link", "source", "NER"])
        index = 0
        for start in range(0, rows, chunk):
            recipes = generate_recipes(min(chunk, rows - start), seed=seed * 100_003 + start)
            for r in recipes:
                directions = list(r["directions"])
                if skew:
                    for _ in range(max(1, round(rng.lognormvariate(0, 0.6))) - 1):
                        directions += rng.choice(recipes)["directions"]
                writer.writerow(
                    [
                        index,
                        r["title"],
                        json.dumps(r["ingredients"]),
                        json.dumps(directions),
                        r["link"],
                        r["source"],
                        json.dumps(r["ner"]),
                    ]
                )
                index += 1
    return path


def train_flags(profile: Profile, model: Path, data: Path, output: Path, cache: Path, *extra) -> list[str]:
    """Our trainer's flags for a timed run: no validation, no periodic checkpoint, one log per
    ``warmup_steps`` steps (the first window is the warm-up, later ones are timed)."""
    flags = [
        "--data",
        str(data),
        "--pretrained-model",
        str(model),
        "--model-output",
        str(output),
        "--cache-dir",
        str(cache),
        "--batch-size",
        str(profile.batch_size),
        "--epochs",
        "1000",
        "--max-steps",
        str(profile.warmup_steps + profile.timed_steps),
        "--eval-split-ratio",
        "0",
        "--save-steps",
        "1000000000",
        "--eval-steps",
        "1000000000",
        "--logging-steps",
        str(profile.warmup_steps),
        "--warmup-steps",
        "0",
        "--max-source-length",
        str(profile.max_source),
        "--max-target-length",
        str(profile.max_target),
        "--dataloader-num-workers",
        str(profile.workers),
        "--mixed-precision",
        "bf16" if profile.bf16 else "no",
        "--dedup",
        "off",
    ]  # timing, on every row
    flags.append("--compile" if profile.compile else "--disable-compilation")
    return flags + [str(x) for x in extra]
