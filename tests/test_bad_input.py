"""Bad input through the command line: one readable line on stderr, a distinct exit code, and the
existing checkpoints of the run folder untouched."""

from __future__ import annotations

import csv
import os

import pytest

from chef_genius.checkpoint import files as ckfiles
from chef_genius.errors import EXIT_DATA, EXIT_USAGE, run_cli
from chef_genius.train.cli import main
from conftest import train_args

QUICK = ("--max-source-length", 32, "--max-target-length", 64, "--eval-steps", 100, "--save-steps", 2)
GOOD_ROW = ["0", "Toast", '["1 slice bread"]', '["Toast the bread."]', "x", "y", '["bread"]']
HEADER = ["", "title", "ingredients", "directions", "link", "source", "NER"]


@pytest.fixture(scope="module")
def existing_run(tiny_model, small_csv, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("existing") / "run"
    assert main(train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--max-steps", 2)) == 0
    return out


def digest(folder):
    return {
        p.relative_to(folder).as_posix(): ckfiles.sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "metrics.jsonl"
    }


def run(argv, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    return exc.value.code, lines


def write_csv(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def _files(tmp_path):
    big = tmp_path / "huge-field.csv"
    with open(big, "w", encoding="utf-8", newline="") as handle:
        handle.write(",".join(HEADER) + '\n0,Soup,"[""water""]","[""')
        handle.write("a" * (100 << 20))
        handle.write('""]",x,y,"[""water""]"\n')
    junk = tmp_path / "junk.csv"
    junk.write_bytes(bytes(range(256)) * 64)
    mixed = tmp_path / "mixed.csv"
    latin1 = ",".join(["1", "Cr\xe8me", '"[""1 cup cr\xe8me""]"', '"[""Whip.""]"', "x", "y", '"[""cr\xe8me""]"'])
    mixed.write_bytes((",".join(HEADER) + "\n").encode() + latin1.encode("latin-1") + b"\n")
    return {
        "wrong columns": (write_csv(tmp_path / "wrong.csv", [["name", "text"], ["a", "b"]]), "expected columns"),
        "binary junk": (junk, "expected columns"),
        "empty file": (write_csv(tmp_path / "empty.csv", []), "empty"),
        "100 MB field": (big, "no usable recipe"),
        "only undecodable rows": (
            mixed,
            "no usable recipe in the file (0 of 1 rows kept; skipped: invalid_utf8=1); 1 row is not valid UTF-8",
        ),
        "not json": (tmp_path / "bad.jsonl", "not a JSON Lines file"),
        "unknown format": (write_csv(tmp_path / "data.txt", [HEADER, GOOD_ROW]), "unknown data format"),
    }


def test_malformed_data_files_end_with_one_line_and_exit_3(tiny_model, cache_dir, existing_run, tmp_path, capsys):
    files = _files(tmp_path)
    files["not json"][0].write_text("this is prose\n" * 30)
    before = digest(existing_run)
    for name, (path, expected) in files.items():
        argv = train_args(
            tiny_model, path, existing_run, cache_dir, *QUICK, "--resume", "latest", "--allow-config-change"
        )
        code, lines = run(argv, capsys)
        assert (code, len(lines)) == (EXIT_DATA, 1), (name, lines)
        assert expected in lines[0], (name, lines[0])
    assert digest(existing_run) == before


def test_mixed_encodings_skip_the_bad_rows_and_train(tiny_model, small_csv, cache_dir, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    mixed = tmp_path / "mixed.csv"
    good = small_csv.read_bytes()
    bad = ",".join(["999", "Cr\xe8me", '"[""cr\xe8me""]"', '"[""Whip.""]"', "x", "y", '"[""cr\xe8me""]"'])
    mixed.write_bytes(good + bad.encode("latin-1") + b"\n")
    out = tmp_path / "run"
    assert main(train_args(tiny_model, mixed, out, cache_dir, *QUICK, "--max-steps", 1)) == 0
    assert "96 of 97 rows used; skipped invalid_utf8 1" in caplog.text
    assert "1 row is not valid UTF-8 and skipped; if the file was saved as Windows-1252" in caplog.text


@pytest.mark.parametrize(
    "extra, expected",
    [
        (("--batch-size", "0"), "--batch-size must be a positive integer"),
        (("--save-every-minutes", "-1"), "--save-every-minutes must be 0 or more"),
        (("--on-save-error", "ignore"), "invalid choice"),
        (("--no-such-flag",), "unrecognized arguments"),
        (("--epochs", "two"), "invalid int value"),
        (("--learning-rate", "1e38"), "--learning-rate must be positive and at most 10"),  # was a traceback
        (("--learning-rate", "nan"), "--learning-rate must be positive"),
        (("--learning-rate", "inf"), "--learning-rate must be positive"),
        (("--learning-rate=-1e-4",), "--learning-rate must be positive"),
        (("--spike-factor", "-1"), "--spike-factor must be 0 or more"),
    ],
)
def test_bad_flags_exit_2(tiny_model, small_csv, cache_dir, tmp_path, capsys, extra, expected):
    code, lines = run(train_args(tiny_model, small_csv, tmp_path / "run", cache_dir, *extra), capsys)
    assert (code, len(lines)) == (EXIT_USAGE, 1)
    assert expected in lines[0]
    assert not (tmp_path / "run").exists()


def test_model_output_under_a_file_exits_2(tiny_model, small_csv, cache_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    code, lines = run(train_args(tiny_model, small_csv, blocker / "run", cache_dir), capsys)
    assert (code, len(lines)) == (EXIT_USAGE, 1)
    assert "is not a writable folder" in lines[0]
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("how", ["fresh", "resume", "inside", "demo"])
def test_model_output_in_a_checkpoint_is_refused_before_anything_is_written(
    tiny_model, small_csv, cache_dir, existing_run, how, capsys
):
    checkpoint = existing_run / "checkpoint-2"
    target = checkpoint / "final" if how == "inside" else checkpoint
    argv = {
        "fresh": train_args(tiny_model, small_csv, target, cache_dir),
        "resume": ["--resume-from-checkpoint", checkpoint, "--model-output", target, "--cache-dir", cache_dir],
        "inside": train_args(tiny_model, small_csv, target, cache_dir, "--resume-from-checkpoint", checkpoint),
        "demo": ["--demo", "--model-output", target, "--cache-dir", cache_dir],
    }[how]
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    code, lines = run(argv, capsys)
    assert (code, len(lines)) == (EXIT_USAGE, 1)
    assert "the checkpoint checkpoint-2" in lines[0] and lines[0].endswith(f"--model-output {existing_run}")
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before


def test_data_folder_instead_of_file_exits_2(tiny_model, cache_dir, tmp_path, capsys):
    code, lines = run(train_args(tiny_model, tmp_path, tmp_path / "run", cache_dir), capsys)
    assert (code, len(lines)) == (EXIT_USAGE, 1) and "file not found" in lines[0]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_output_exits_2(tiny_model, small_csv, cache_dir, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, lines = run(train_args(tiny_model, small_csv, locked / "run", cache_dir), capsys)
    finally:
        locked.chmod(0o755)
    assert (code, len(lines)) == (EXIT_USAGE, 1) and "is not a writable folder" in lines[0]


def test_unwritable_output_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """The same check as a read-only folder, also where the tests run as root."""
    from pathlib import Path

    from chef_genius.checkpoint import disk
    from chef_genius.errors import UserError

    def refuse(self, data):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(UserError, match="is not a writable folder .Permission denied.") as exc:
        disk.prepare_output(tmp_path / "run")
    assert exc.value.exit_code == EXIT_USAGE
