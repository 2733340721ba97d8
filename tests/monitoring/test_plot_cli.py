"""cli/plot_training.py: PNG files from a run's metrics.jsonl, resume points included."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chef_genius.errors import EXIT_DATA, EXIT_USAGE
from chef_genius.monitoring.plot_cli import main
from chef_genius.monitoring.plotting import PLOT_FILES, RECIPE_METRICS_FILE, history, metric_series, moving_average

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_metrics(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
        handle.write('{"type": "train", "step": 9')  # a torn last line, as a killed run leaves it


def run_records():
    records = [{"type": "start", "step": 0}]
    for step in range(2, 41, 2):
        if step == 22:
            records.append({"type": "resume", "step": 20, "from_checkpoint": "run/checkpoint-20"})
        records.append(
            {
                "type": "train",
                "step": step,
                "epoch": step / 20,
                "loss": 5 - step / 10,
                "step_losses": [5 - (step - 1) / 10, 5 - step / 10],
                "lr": 1e-4 * (1 - step / 40),
                "tokens_per_s": 1000.0 + step,
            }
        )
        if step % 10 == 0:
            records.append({"type": "eval", "step": step, "eval_loss": 4.5 - step / 20})
    return records


def test_plots_are_written_as_png_with_resumes_reported(tmp_path, capsys):
    run = tmp_path / "run"
    write_metrics(run, run_records())
    assert main([str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["resumes"] == [20] and summary["last_step"] == 40
    assert summary["best_eval_loss"] == pytest.approx(2.5)
    assert [p.split("/")[-1].split("\\")[-1] for p in summary["plots"]] == list(PLOT_FILES)
    for name in PLOT_FILES:
        data = (run / "plots" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_plots_go_where_asked_and_the_text_output_names_them(tmp_path, capsys):
    run = tmp_path / "run"
    write_metrics(run, run_records())
    assert main([str(run), "--out", str(tmp_path / "elsewhere"), "--smooth", "3"]) == 0
    out = capsys.readouterr().out
    assert "resumed at step 20" in out and str(tmp_path / "elsewhere" / "loss.png") in out
    assert (tmp_path / "elsewhere" / "overview.png").is_file()


def generation(step, valid):
    return {
        "type": "generation",
        "step": step,
        "structure_valid": valid,
        "ingredient_coverage": 0.5,
        "invented_ingredients": 2.0,
        "repetition": 0.1,
        "rouge_l": 0.3,
        "bleu": 20.0,
        "recipes": 20,
    }


def test_recipe_metrics_of_a_run_with_eval_generate_are_plotted(tmp_path, capsys):
    run = tmp_path / "run"
    records = run_records()
    records[1:1] = [generation(10, 0.2)]  # before the resume at 20: kept
    records += [generation(20, 0.4), generation(30, 0.6), generation(40, 0.9)]
    write_metrics(run, records)
    assert main([str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["plots"][-1].endswith(RECIPE_METRICS_FILE)
    assert summary["recipe_metrics"]["step"] == 40 and summary["recipe_metrics"]["structure_valid"] == 0.9
    data = (run / "plots" / RECIPE_METRICS_FILE).read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_recipe_metrics_replayed_after_a_resume_are_drawn_once():
    records = [
        {"type": "start", "step": 0},
        generation(10, 0.1),
        generation(20, 0.2),
        generation(30, 0.3),
        {"type": "resume", "step": 20},
        generation(30, 0.5),
    ]
    assert metric_series(history(records), "structure_valid") == [(10, 0.1), (20, 0.2), (30, 0.5)]


def test_a_run_without_recipe_metrics_gets_no_recipe_metrics_plot(tmp_path, capsys):
    run = tmp_path / "run"
    write_metrics(run, run_records())
    assert main([str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe_metrics"] is None
    assert not (run / "plots" / RECIPE_METRICS_FILE).exists()


def test_moving_average_is_a_trailing_mean():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_a_run_without_records_is_a_data_error(tmp_path):
    from chef_genius.errors import DataError

    write_metrics(tmp_path / "run", [{"type": "start", "step": 0}])
    with pytest.raises(DataError) as caught:
        main([str(tmp_path / "run")])
    assert caught.value.exit_code == EXIT_DATA


@pytest.mark.parametrize("make", ["missing folder", "no metrics"])
def test_bad_run_folder_is_one_line_and_exit_2(tmp_path, make):
    target = tmp_path / "nope"
    if make == "no metrics":
        target.mkdir()
    result = subprocess.run(
        [sys.executable, str(REPO / "cli" / "plot_training.py"), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_USAGE
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert not (target / "plots").exists()
