"""``cli/inspect_data.py``: the report's counts are the data's, its lengths the tokenizer's."""

from __future__ import annotations

import csv
import json

import pytest

from chef_genius.data.inspect_cli import main
from chef_genius.devtools.planted import planted_recipes
from chef_genius.devtools.sample_data import write_recipenlg_csv
from chef_genius.errors import EXIT_USAGE


@pytest.fixture(scope="module")
def planted_csv(tmp_path_factory):
    """60 recipes, 9 copies (3 re-cased, 3 reordered, 3 reworded) and 2 broken rows."""
    recipes, copies = planted_recipes(60, 9, seed=11)
    path = tmp_path_factory.mktemp("inspect") / "planted.csv"
    write_recipenlg_csv(path, recipes)
    with open(path, "a", encoding="utf-8", newline="") as handle:
        w = csv.writer(handle, lineterminator="\n")
        w.writerow([100, "No Directions", '["1 egg"]', "[]", "x", "y", '["egg"]'])
        w.writerow([101, "Bad List", '["1 egg"', '["Boil."]', "x", "y", '["egg"]'])
    return path, copies


def test_the_report_counts_rows_skips_duplicates_and_cut_recipes(planted_csv, tiny_model, tmp_path, capsys):
    path, copies = planted_csv
    argv = [
        "--data",
        str(path),
        "--pretrained-model",
        str(tiny_model),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "report"),
        "--max-source-length",
        "64",
        "--max-target-length",
        "128",
        "--eval-split-ratio",
        "0.1",
        "--json",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_read"] == 71 and summary["usable"] == 69
    assert summary["skipped"] == {"empty_text": 1, "unparsable_list": 1}
    found = summary["dedup"]["found"]
    assert found["exact"] >= 6 and found["exact"] + found["near"] >= 8 and found["held_out_twin"] == 0
    removed = summary["dedup"]["removed_from_training"]
    assert summary["training_recipes"] + summary["validation_recipes"] == 69 - removed
    target = summary["lengths"]["target"]
    assert target["max_length"] == 128 and 0 < target["cut"] <= summary["training_recipes"]
    assert target["percentiles"]["100"] > 128 and target["suggested"] >= target["percentiles"]["99"]
    assert any("--max-target-length" in w for w in summary["warnings"])
    assert all((tmp_path / "report" / name).is_file() for name in ("lengths_input.png", "lengths_target.png"))

    # --dedup off: nothing looked for, every usable row trained on or held out
    assert main(argv + ["--dedup", "off"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert off["dedup"]["found"] is None and off["training_recipes"] + off["validation_recipes"] == 69

    # the text form says the same in lines
    assert main(argv[:-1]) == 0
    text = capsys.readouterr().out
    assert "71 rows read, 69 usable" in text and f"{found['exact']} exact, {found['near']} near" in text


def test_a_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    from chef_genius.errors import run_cli

    with pytest.raises(SystemExit) as stop:
        run_cli(main, ["--data", str(tmp_path / "nope.csv")])
    assert stop.value.code == EXIT_USAGE
    assert "--data file not found" in capsys.readouterr().err


def test_several_sources_are_reported_each(planted_csv, small_csv, tiny_model, tmp_path, capsys):
    path, _ = planted_csv
    common = ["--pretrained-model", str(tiny_model), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path)]
    assert main(["--data", str(path), f"{small_csv}:0.5", *common, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    by_name = {s["data"].rsplit("/", 1)[-1]: s for s in summary["sources"]}
    assert set(by_name) == {"planted.csv", "small.csv"}
    assert by_name["planted.csv"]["rows_read"] == 71 and by_name["small.csv"]["rows_read"] == 96
    assert summary["rows_read"] == 71 + 96
    assert sum(s["training_recipes"] for s in summary["sources"]) == summary["training_recipes"]
    small = by_name["small.csv"]
    assert small["weight"] == 0.5 and small["per_epoch"] == int(small["training_recipes"] * 0.5 + 0.5)
    assert main(["--data", str(path), f"{small_csv}:0.5", *common]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("source ")]
    assert len(lines) == 2 and any("small.csv (weight 0.5)" in line for line in lines)
