"""A training run on a file with planted duplicates: they leave training, the log and the run folder
say which, and a resume continues bitwise on the same deduplicated rows."""

from __future__ import annotations

import csv
import json
import logging

import pytest

from chef_genius.data.corpus import AUDIT_FILE, SIGNATURES_FILE
from chef_genius.devtools.planted import planted_recipes
from chef_genius.devtools.sample_data import write_recipenlg_csv
from chef_genius.train.data_setup import DATA_SUMMARY_FILE

from conftest import run_training, step_losses, train_args

FLAGS = ("--epochs", 1, "--max-steps", 6, "--save-steps", 3, "--eval-steps", 3, "--eval-split-ratio", 0.1)


@pytest.fixture(scope="module")
def planted_csv(tmp_path_factory):
    recipes, copies = planted_recipes(60, 12, seed=13)
    path = tmp_path_factory.mktemp("planted") / "planted.csv"
    write_recipenlg_csv(path, recipes)
    return path, copies


@pytest.fixture(scope="module")
def reference(planted_csv, tiny_model, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dedup-ref") / "run"
    assert run_training(*train_args(tiny_model, planted_csv[0], out, cache_dir, *FLAGS)) == 0
    return out


def test_duplicates_leave_training_and_every_removal_is_listed(reference, planted_csv, caplog):
    _, copies = planted_csv
    summary = json.loads((reference / DATA_SUMMARY_FILE).read_text())
    found = summary["dedup"]["found"]
    audit = list(csv.DictReader(open(reference / AUDIT_FILE, encoding="utf-8")))
    assert len(audit) == found["exact"] + found["near"] == summary["dedup"]["removed_from_training"]
    exact_copies = {c + 1 for c, o, kind in copies if kind != "reworded"}  # record numbers
    assert exact_copies <= {int(a["record"]) for a in audit if a["kind"] == "exact"}
    assert summary["training_recipes"] + summary["validation_recipes"] == 72 - len(audit)
    assert (reference / SIGNATURES_FILE).is_file()


def test_the_log_says_duplicates_were_removed(planted_csv, tiny_model, cache_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="chef_genius")
    out = tmp_path / "run"
    assert (
        run_training(
            *train_args(tiny_model, planted_csv[0], out, cache_dir, "--max-steps", 1, "--eval-split-ratio", 0.1)
        )
        == 0
    )
    assert any(r.getMessage().startswith("duplicates removed: ") for r in caplog.records)
    assert any(AUDIT_FILE in r.getMessage() for r in caplog.records)


def test_a_resumed_dedup_run_is_bitwise_equal(reference, planted_csv, tiny_model, cache_dir, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "checkpoint-6")
    for name in ("metrics.jsonl",):
        (out / name).unlink()
    assert (
        run_training(
            *train_args(
                tiny_model,
                planted_csv[0],
                out,
                cache_dir,
                *FLAGS,
                "--resume-from-checkpoint",
                str(out / "checkpoint-3"),
            )
        )
        == 0
    )
    expected, got = step_losses(reference), step_losses(out)
    assert sorted(got) == [4, 5, 6]
    assert [got[s] for s in got] == [expected[s] for s in got]


def test_turning_dedup_off_on_resume_is_refused(reference, planted_csv, tiny_model, cache_dir, tmp_path):
    from chef_genius.errors import UserError
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    with pytest.raises(UserError) as err:
        run_training(
            *train_args(
                tiny_model,
                planted_csv[0],
                out,
                cache_dir,
                *FLAGS,
                "--dedup",
                "off",
                "--resume-from-checkpoint",
                str(out / "checkpoint-3"),
            )
        )
    assert err.value.exit_code == 2 and "--dedup remove -> off" in str(err.value)


def test_eval_data_that_twins_every_training_recipe_is_refused_not_trained_for_zero_steps(
    planted_csv, tiny_model, cache_dir, tmp_path, capsys
):
    """Every training recipe removed as a twin of a held-out one: one line and the data exit code (3),
    never a run that "trains" 0 steps and exits 0; nothing written to the run folder."""
    path, _ = planted_csv
    out = tmp_path / "run"
    from chef_genius.errors import EXIT_DATA, run_cli
    from chef_genius.train.cli import main

    with pytest.raises(SystemExit) as stop:
        run_cli(main, train_args(tiny_model, path, out, cache_dir, *FLAGS, "--eval-data", path))
    assert stop.value.code == EXIT_DATA
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no recipe is left to train on" in err and "--eval-data" in err
    assert not list(out.glob("checkpoint-*")) and not (out / "metrics.jsonl").exists()
