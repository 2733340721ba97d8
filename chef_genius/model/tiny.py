"""A tiny T5 model and tokenizer built offline from the bundled sample recipes.

It stands in for FLAN-T5 in the demo, the tests and the CPU benchmark: same architecture family
(gated-GELU T5 v1.1, untied ``lm_head`` like FLAN-T5), a Unigram tokenizer with T5's special tokens
(pad=0, eos=1, unk=2), a few hundred thousand parameters. Built deterministically from a seed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from chef_genius.paths import MODELS_ROOT, SAMPLE_DATA
from chef_genius.data.readers import ReadStats, read_examples

log = logging.getLogger(__name__)

TINY_DIR = MODELS_ROOT / "tiny-t5"
DEMO_DIR = MODELS_ROOT / "demo-t5"
# The demo's model: wide enough to learn the recipe form and copy its ingredients in a few minutes of
# CPU, no dropout (a few hundred steps on 400 recipes do not overfit), and its output head tied to the
# embeddings, as its config says (transformers' T5 config always declares tied embeddings: an untied
# head makes ``from_pretrained`` warn). The tests' and benchmarks' model keeps ``tiny_config``'s sizes.
DEMO_SIZES = dict(d_model=128, d_kv=32, d_ff=256, dropout_rate=0.0, tie_head=True)
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]


def tiny_config(vocab_size: int, tie_head: bool = False, **sizes):
    from transformers import T5Config

    values: dict[str, Any] = dict(
        d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, dropout_rate=0.1
    )
    values.update(sizes)
    # tie_word_embeddings and decoder_start_token_id go through T5Config's **kwargs, which its annotations hide
    return T5Config(
        vocab_size=vocab_size,
        relative_attention_num_buckets=16,  # type: ignore[call-arg]
        relative_attention_max_distance=64,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=tie_head,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        **values,
    )


def build_tokenizer(texts, vocab_size: int = VOCAB_SIZE):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny(
    out_dir: str | Path = TINY_DIR, data_path: str | Path = SAMPLE_DATA, seed: int = 0, tie_head: bool = False, **sizes
) -> Path:
    """Write tokenizer and randomly initialised tiny T5 into ``out_dir`` (``sizes``: T5Config overrides)."""
    from transformers import T5ForConditionalGeneration

    out_dir = Path(out_dir)
    texts = []
    for example in read_examples(data_path, ReadStats()):
        texts += [example["source"], example["target"]]
    tokenizer = build_tokenizer(texts)
    vocab_size = -(-len(tokenizer) // 8) * 8
    torch.manual_seed(seed)
    config = tiny_config(vocab_size, tie_head, **sizes)
    model = T5ForConditionalGeneration(config)
    if not tie_head:
        # transformers ties lm_head to the embeddings at construction; FLAN-T5 keeps its own lm_head, so
        # give the stand-in a separately initialised one (a checkpoint holding both keeps them untied).
        model.lm_head = torch.nn.Linear(config.d_model, vocab_size, bias=False)
        torch.nn.init.normal_(model.lm_head.weight, std=config.d_model**-0.5)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    model.generation_config.max_length = 256
    model.save_pretrained(out_dir)
    return out_dir


def ensure_tiny(out_dir: str | Path = TINY_DIR, **sizes) -> Path:
    """The tiny model folder, built on first use."""
    out_dir = Path(out_dir)
    if not (out_dir / "config.json").is_file() or not (out_dir / "tokenizer.json").is_file():
        log.info("building the tiny offline T5 model in %s", out_dir)
        build_tiny(out_dir, **sizes)
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build the tiny offline T5 model and tokenizer.")
    parser.add_argument("--out", default=str(TINY_DIR))
    parser.add_argument("--data", default=str(SAMPLE_DATA))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny(args.out, args.data, args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
