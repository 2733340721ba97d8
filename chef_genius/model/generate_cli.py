"""``cli/generate_recipe.py``: write a recipe from a list of ingredients with a trained model."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import records as ckrecords
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.cli_support import Parser
from chef_genius.data.recipes import DEFAULT_SOURCE_TEMPLATE, source_from_ingredients, template_fields
from chef_genius.errors import EXIT_OK, UserError, run_cli
from chef_genius.model.generation import GenerationSettings, generate_texts, recipe_dict, render_text

EXAMPLES = """examples:
  python cli/generate_recipe.py --model models/flan-large --ingredients "chicken, rice, garlic"
  python cli/generate_recipe.py --model models/flan-large/checkpoint-12000 --ingredients "flour, butter, sugar"
  python cli/generate_recipe.py --model models/flan-large --ingredients "salmon, lemon, dill" \\
      --do-sample --temperature 0.8 --top-p 0.9 --seed 7 --num-return-sequences 3
  python cli/generate_recipe.py --model models/flan-large --ingredients "eggs, spinach" --json
  python cli/generate_recipe.py --model models/old-system --prompt "Create a detailed recipe for Pad Thai with step-by-step instructions."

--model takes a run folder (its final model, else its newest complete checkpoint), a checkpoint-N
folder, or any folder written by save_pretrained. Default decoding is greedy, at most 384 new tokens,
and stops at the end of the recipe (the model's end-of-text token); --num-beams 4 often reads better
on a large model, at about 4 times the time. --ingredients are put into the prompt the model was
trained with (its --source-template, kept in chef_genius_prompt.json beside config.json; the default
ingredient prompt for a folder without one); --prompt is given to the model as it is.
"""  # noqa: E501 (printed verbatim by --help)


def build_parser() -> argparse.ArgumentParser:
    d = GenerationSettings()
    p = Parser(
        prog="generate_recipe.py",
        description="Write a recipe from ingredients with a trained model.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="CHECKPOINT_OR_MODEL_DIR",
        help="run folder, checkpoint-N folder or saved model folder",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--ingredients",
        action="append",
        metavar='"A, B, C"',
        help="comma-separated ingredients, put into the model's training prompt; repeat the flag "
        "for several recipes in one batch",
    )
    what.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="the model's whole input, given as is (e.g. for a model trained on input/output "
        "pairs); repeat the flag for several recipes in one batch",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="N",
        default=d.max_new_tokens,
        help=f"longest recipe in tokens (default {d.max_new_tokens})",
    )
    p.add_argument(
        "--num-beams",
        type=int,
        metavar="N",
        default=None,
        help=f"beam search width; 1 = greedy (default {d.num_beams})",
    )
    p.add_argument("--do-sample", action="store_true", help="sample instead of beam search (varied recipes)")
    p.add_argument(
        "--temperature",
        type=float,
        metavar="X",
        default=d.temperature,
        help=f"sampling temperature, lower = safer (default {d.temperature})",
    )
    p.add_argument(
        "--top-p", type=float, metavar="X", default=d.top_p, help=f"nucleus sampling mass (default {d.top_p})"
    )
    p.add_argument(
        "--top-k",
        type=int,
        metavar="N",
        default=d.top_k,
        help=f"sample among the k likeliest tokens (default {d.top_k})",
    )
    p.add_argument("--seed", type=int, metavar="N", default=None, help="random seed, for repeatable sampling")
    p.add_argument(
        "--num-return-sequences",
        type=int,
        metavar="N",
        default=d.num_return_sequences,
        help="recipes per ingredient list (default 1)",
    )
    p.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        metavar="N",
        default=d.no_repeat_ngram_size,
        help=f"never write the same span of N tokens twice, against loops; 0 = off (default {d.no_repeat_ngram_size})",
    )
    p.add_argument(
        "--repetition-penalty",
        type=float,
        metavar="X",
        default=d.repetition_penalty,
        help=f"penalise tokens already written, against loops; 1.0 = off (default {d.repetition_penalty})",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run (default auto: CUDA when available)",
    )
    p.add_argument("--raw", action="store_true", help="print the model's one-line output as is")
    p.add_argument("--json", action="store_true", help="print the recipes as JSON")
    return p


def settings_from(args) -> GenerationSettings:
    if args.num_beams is None:
        args.num_beams = 1 if args.do_sample else GenerationSettings.num_beams
    checks = [
        (args.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
        (args.num_beams >= 1, "--num-beams must be at least 1"),
        (args.num_return_sequences >= 1, "--num-return-sequences must be at least 1"),
        (args.temperature > 0, "--temperature must be positive"),
        (0 < args.top_p <= 1, "--top-p must be in (0, 1]"),
        (args.top_k >= 0, "--top-k must be 0 or more"),
        (args.no_repeat_ngram_size >= 0, "--no-repeat-ngram-size must be 0 or more"),
        (args.repetition_penalty > 0, "--repetition-penalty must be positive"),
        (
            args.do_sample or args.num_return_sequences <= args.num_beams,
            "--num-return-sequences cannot exceed --num-beams without --do-sample",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        num_return_sequences=args.num_return_sequences,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        repetition_penalty=args.repetition_penalty,
    )


def resolve_model_dir(given: str) -> Path:
    """A folder with a model: the folder itself, else a run folder's newest complete checkpoint."""
    path = Path(given)
    if not path.is_dir():
        raise UserError(
            f"--model {given}: no such folder (give a run folder, a checkpoint-N folder or a saved model folder)"
        )
    if (path / ckpt.MODEL_CONFIG).is_file() or ckpt.is_adapter(path):  # a model, or a LoRA adapter
        return path
    latest, _ = ckmanifest.find_latest(path, need_state=False)  # generation needs the model, not the state
    if latest is None:
        raise UserError(
            f"--model {given}: no model here ({ckpt.MODEL_CONFIG} missing) and no complete checkpoint-N folder"
        )
    return latest


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _tolerant_stdout()
    settings = settings_from(args)
    model_dir = resolve_model_dir(args.model)
    given, sources = model_inputs(args, model_dir)

    import torch
    from chef_genius.model.loading import load_model, load_tokenizer, native_bf16, quiet_transformers

    quiet_transformers()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    device = _device(args.device)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(model_dir).to(device).eval()
    refuse_nonfinite(model, model_dir)
    if args.seed is not None:
        torch.manual_seed(args.seed)

    def bf16_autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16)

    autocast: Callable[[], contextlib.AbstractContextManager] = (
        bf16_autocast if native_bf16(device) else contextlib.nullcontext
    )
    if not args.json:
        print(f"model: {model_dir}; {_decoding(settings)}", file=sys.stderr, flush=True)
    texts = generate_texts(model, tokenizer, given, settings, device, autocast, sources=sources)

    if args.json:
        key = "prompt" if args.prompt else "ingredients"
        results = [
            {key: text, "input": source, "recipes": [recipe_dict(t) for t in outs]}
            for text, source, outs in zip(given, sources, texts)
        ]
        print(
            json.dumps(
                {"model": str(model_dir), "settings": settings.to_dict(), "seed": args.seed, "results": results},
                indent=2,
            )
        )  # ASCII escapes: safe on any console encoding
        return EXIT_OK
    blocks = []
    for asked, outs in zip(given, texts):
        for i, text in enumerate(outs, 1):
            header = f"=== {asked}" + (f" ({i} of {len(outs)})" if len(outs) > 1 else "") + " ==="
            body = text if args.raw else _readable(text)
            blocks.append(body if len(given) == 1 and len(outs) == 1 else f"{header}\n{body}")
    print("\n\n".join(blocks))
    return EXIT_OK


def refuse_nonfinite(model, model_dir: Path) -> None:
    """A model whose weights hold NaN or Inf (a diverged run) writes nothing: say so instead (exit 2)."""
    import torch

    bad = [name for name, p in model.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise UserError(
            f"--model {model_dir}: {len(bad)} of its weight tensors hold NaN or Inf (e.g. {bad[0]}): the "
            "training run that wrote it diverged; give an earlier checkpoint (python "
            "cli/fix_all_checkpoints.py RUN_FOLDER --dry-run names the newest healthy one)"
        )


def model_inputs(args, model_dir: Path) -> tuple[list[str], list[str]]:
    """(what the user gave, the model inputs): --prompt as is, or --ingredients in the model's template."""
    if args.prompt:
        prompts = [text.strip() for text in args.prompt]
        if not all(prompts):
            raise UserError("--prompt is empty: give the model's input text")
        return prompts, prompts
    ingredient_lists = [text.strip() for text in args.ingredients]
    if not all(any(part.strip() for part in text.split(",")) for text in ingredient_lists):
        raise UserError('--ingredients is empty: give a comma-separated list such as "chicken, rice, garlic"')
    template = ckrecords.read_prompt(model_dir) or DEFAULT_SOURCE_TEMPLATE
    try:
        fields = template_fields(template)
    except ValueError:
        raise UserError(
            f"{model_dir / ckpt.PROMPT} holds an unusable template {template!r}; give the model's input with --prompt"
        ) from None
    if fields != {"ingredients"}:
        raise UserError(
            f"{model_dir.name} was trained with inputs {template!r}, which need more than "
            "ingredients: give the model's whole input with --prompt"
        )
    return ingredient_lists, [source_from_ingredients(text, template) for text in ingredient_lists]


def _tolerant_stdout() -> None:
    """A recipe's "½" or "°" must not crash a Windows console or a redirected cp1252 stdout."""
    try:
        sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]  # AttributeError handled below
    except (AttributeError, ValueError):  # a replaced or detached stream (tests, embedding)
        pass


def _readable(text: str) -> str:
    """The rendered recipe; the text as is when it has no recipe structure (an early checkpoint)."""
    recipe = recipe_dict(text)
    if not recipe["ingredients"] and not recipe["directions"]:
        return f"{text}\n(no title / ingredients / directions structure in this output: shown as generated)"
    return render_text(text)


def _device(choice: str):
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def _decoding(s: GenerationSettings) -> str:
    if s.do_sample:
        how = f"sampling (temperature {s.temperature}, top-p {s.top_p}, top-k {s.top_k})"
    else:
        how = "greedy" if s.num_beams == 1 else f"beam search ({s.num_beams} beams)"
    if s.repetition_penalty != 1.0:
        how += f", repetition penalty {s.repetition_penalty:g}"
    if s.no_repeat_ngram_size:
        how += f", no repeated {s.no_repeat_ngram_size}-token span"
    return how


def entry() -> None:
    run_cli(main)
