"""Recipe metrics during training (--eval-generate, --metric-for-best) and after it (evaluate_recipes)."""

from __future__ import annotations

import json

import pytest

from conftest import run_training, step_losses, train_args
from chef_genius.errors import UserError
from chef_genius.evaluation import cli as evaluate_cli
from chef_genius.evaluation.metrics import METRICS
from chef_genius.train.evaluation import is_better


def records(output, kind):
    return [
        json.loads(line)
        for line in (output / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == kind
    ]


@pytest.fixture(scope="module")
def generating_runs(tiny_model, small_csv, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    flags = (
        "--max-steps",
        "10",
        "--eval-generate",
        "4",
        "--metric-for-best",
        "ingredient_coverage",
        "--max-target-length",
        "48",
        "--eval-split-ratio",
        "0.1",
    )
    whole, parts = root / "whole", root / "parts"
    assert run_training(*train_args(tiny_model, small_csv, whole, cache_dir, *flags)) == 0
    assert run_training(*train_args(tiny_model, small_csv, parts, cache_dir, *flags, "--stop-after-steps", "5")) == 0
    assert (
        run_training(*train_args(tiny_model, small_csv, parts, cache_dir, *flags, "--resume-from-checkpoint", "latest"))
        == 0
    )
    return whole, parts


def test_each_evaluation_logs_recipe_metrics_of_the_same_validation_recipes(generating_runs):
    whole, _ = generating_runs
    generated = records(whole, "generation")
    assert [r["step"] for r in generated] == [5, 10]
    for r in generated:
        assert set(METRICS) <= set(r) and r["recipes"] == 4
        assert 0.0 <= r["structure_valid"] <= 1.0 and 0.0 <= r["ingredient_coverage"] <= 1.0
    assert [s["ingredients"] for s in generated[0]["samples"]] == [s["ingredients"] for s in generated[1]["samples"]]


def test_a_resumed_run_with_generation_is_bitwise_equal_to_an_uninterrupted_one(generating_runs):
    whole, parts = generating_runs
    assert step_losses(parts) == step_losses(whole)
    assert [r["ingredient_coverage"] for r in records(parts, "generation")] == [
        r["ingredient_coverage"] for r in records(whole, "generation")
    ]


def test_the_best_checkpoint_is_chosen_by_the_metric_for_best(generating_runs):
    whole, _ = generating_runs
    generated = {r["step"]: r["ingredient_coverage"] for r in records(whole, "generation")}
    last = records(whole, "eval")[-1]
    best_step = max(generated, key=lambda step: (generated[step], -step))  # the first of equal bests
    assert last["metric_for_best"] == "ingredient_coverage" and last["best_step"] == best_step
    assert last["best_value"] == generated[best_step]


def test_direction_of_each_metric():
    assert is_better("eval_loss", 1.0, 2.0) and not is_better("eval_loss", 2.0, 1.0)
    assert is_better("structure_valid", 0.9, 0.5) and not is_better("structure_valid", 0.5, 0.5)
    assert is_better("repetition", 0.1, 0.2) and is_better("invented_ingredients", 1.0, 3.0)
    assert is_better("bleu", 1.0, None)


def test_metric_for_best_other_than_loss_needs_eval_generate(tiny_model, small_csv, cache_dir, tmp_path):
    with pytest.raises(UserError, match="--eval-generate"):
        run_training(*train_args(tiny_model, small_csv, tmp_path / "r", cache_dir, "--metric-for-best", "bleu"))


def test_evaluate_recipes_scores_every_checkpoint_of_a_run(generating_runs, tmp_path, capsys):
    whole, _ = generating_runs
    assert (
        evaluate_cli.main(
            [
                str(whole),
                "--max-recipes",
                "3",
                "--max-new-tokens",
                "32",
                "--out",
                str(tmp_path),
                "--json",
                "--progress",
                "log",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert [m["model"] for m in report["models"]] == ["checkpoint-5", "checkpoint-10", "whole (final)"]
    assert report["recipes"] == 3 and "validation split" in report["data"]
    assert all(set(METRICS) <= set(m["metrics"]) for m in report["models"])
    assert (tmp_path / "evaluation.json").is_file()
    assert all((tmp_path / f"evaluation_{name}.png").stat().st_size > 0 for name in METRICS)
    assert (
        evaluate_cli.main(
            [
                str(whole / "checkpoint-5"),
                "--max-recipes",
                "2",
                "--max-new-tokens",
                "16",
                "--out",
                str(tmp_path / "one"),
            ]
        )
        == 0
    )
    assert "checkpoint-5" in capsys.readouterr().out


def test_evaluating_a_checkpoint_leaves_it_byte_identical(generating_runs, tmp_path, capsys):
    """The report of a checkpoint goes beside it, in its run folder; an --out inside it is refused."""
    import shutil
    from chef_genius.doctor.cli import verify_main

    whole, _ = generating_runs
    checkpoint = shutil.copytree(whole / "checkpoint-10", tmp_path / "run" / "checkpoint-10")
    before = {p.relative_to(checkpoint): p.read_bytes() for p in sorted(checkpoint.rglob("*"))}
    assert (
        evaluate_cli.main([str(checkpoint), "--max-recipes", "2", "--max-new-tokens", "16", "--progress", "log"]) == 0
    )
    assert f"written: {checkpoint.parent / 'evaluation.json'}" in capsys.readouterr().out
    with pytest.raises(UserError, match="in the checkpoint checkpoint-10, which nothing may write into") as err:
        evaluate_cli.main([str(checkpoint), "--max-recipes", "2", "--out", str(checkpoint / "reports")])
    assert err.value.exit_code == 2
    assert {p.relative_to(checkpoint): p.read_bytes() for p in sorted(checkpoint.rglob("*"))} == before
    assert verify_main([str(checkpoint), "--deep"]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["/no/such/folder"], "no such folder"),
        (["{tmp}"], "no model here"),
        (["{model}", "--data", "/no/such.csv"], "--data file not found"),
        (["{model}"], "pass --data"),
        (["{model}", "--max-recipes", "0"], "--max-recipes must be at least 1"),
    ],
)
def test_evaluate_recipes_bad_input_is_one_line_and_exit_2(tiny_model, tmp_path, capsys, argv, message):
    from chef_genius.errors import run_cli

    argv = [a.format(tmp=tmp_path, model=tiny_model) for a in argv]
    with pytest.raises(SystemExit) as stop:
        run_cli(evaluate_cli.main, argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_held_out_inputs_follow_the_runs_source_template():
    from chef_genius.data.recipes import DEFAULT_SOURCE_TEMPLATE, fill_template
    from chef_genius.evaluation.heldout import HeldOut, held_out_from_examples, ingredients_from_source

    template = "Cook {title} from: {ingredients}. Keep it short."
    source = fill_template(template, ["chicken", "rice", "garlic"], "Garlic rice")
    assert ingredients_from_source(source, template) == ["chicken", "rice", "garlic"]
    assert ingredients_from_source(fill_template(DEFAULT_SOURCE_TEMPLATE, ["eggs", "milk"])) == ["eggs", "milk"]
    assert ingredients_from_source("Cook x from: eggs, mi", template) == ["eggs", "mi"]  # truncated input
    assert ingredients_from_source("Garlic rice", "Write {title}") == []
    [example] = held_out_from_examples([{"source": source, "target": "Title: Garlic rice"}], template)
    assert example.ingredients == ["chicken", "rice", "garlic"]
    assert example.model_input(DEFAULT_SOURCE_TEMPLATE) == source  # the row's own input, not the default prompt
    assert HeldOut(["eggs"], "").model_input(template) == "Cook from: eggs. Keep it short."


def test_generation_uses_the_template_built_inputs(tiny_model, monkeypatch):
    import torch
    from chef_genius.evaluation import heldout
    from chef_genius.model import generation

    seen = {}

    def fake(
        model, tokenizer, lists, settings, device, autocast, max_source_length, template, sources=None, synced=False
    ):
        seen["sources"] = sources
        return [["Title: x"] for _ in lists]

    monkeypatch.setattr(generation, "generate_texts", fake)
    examples = [heldout.HeldOut(["eggs", "milk"], "Title: y")]
    heldout.generate_for(None, None, examples, torch.device("cpu"), template="Ingredients: {ingredients}")
    assert seen["sources"] == ["Ingredients: eggs, milk"]
