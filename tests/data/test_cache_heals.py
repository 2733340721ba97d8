"""The tokenized cache heals: a flipped byte, a part cut short, damaged metadata or a cache without
checksums is named in one line and tokenized again, never trained on; a dead builder's staging folder
goes, a live one's stays; runs started together on one fresh cache all get it (one builds)."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from chef_genius.oslock import try_lock
from chef_genius.data import cache_store
from chef_genius.data.cache_store import CACHE_META, LOCK_SUFFIX, STAGING
from chef_genius.data.tokenized import load_tokenized
from chef_genius.model.loading import load_tokenizer
from conftest import REPO, SAMPLE_CSV


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(str(tiny_model))


def _part(result):
    meta = json.loads((result.cache_dir / CACHE_META).read_text())
    return result.cache_dir / meta["parts"][0]


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path):
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size * 2 // 3)


def _damage_meta(path):
    meta = path.parent / CACHE_META
    meta.write_text(meta.read_text()[:-7])


def _drop_checksums(path):
    meta = path.parent / CACHE_META
    values = json.loads(meta.read_text())
    del values["checksums"]
    meta.write_text(json.dumps(values))


@pytest.mark.parametrize(
    "damage, said",
    [
        (_flip_byte, "does not match its checksum"),
        (_truncate, "cut short"),
        (_damage_meta, f"its metadata {CACHE_META} is damaged"),
        (_drop_checksums, "no checksums (written by an older version)"),
    ],
    ids=["flipped-byte", "truncated", "damaged-metadata", "no-checksums"],
)
def test_a_damaged_cache_is_named_in_one_line_and_rebuilt(tok, small_csv, tmp_path, caplog, damage, said):
    clean = load_tokenized(small_csv, tok, 64, 128, tmp_path)
    rows = clean.dataset["input_ids"]
    damage(_part(clean))
    del clean
    with caplog.at_level(logging.WARNING, logger="chef_genius"):
        again = load_tokenized(small_csv, tok, 64, 128, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and said in warnings[0] and str(again.cache_dir) in warnings[0]
    assert not again.from_cache  # tokenized again: never trained on the damaged rows
    assert again.dataset["input_ids"] == rows
    assert cache_store.problem(again.cache_dir) == (json.loads((again.cache_dir / CACHE_META).read_text()), None)
    assert load_tokenized(small_csv, tok, 64, 128, tmp_path).from_cache  # healed for the runs after it


def test_the_checksums_cover_every_part(tok, small_csv, tmp_path):
    result = load_tokenized(small_csv, tok, 64, 128, tmp_path)
    meta = json.loads((result.cache_dir / CACHE_META).read_text())
    assert set(meta["checksums"]) == set(meta["parts"])
    for part, expected in meta["checksums"].items():
        assert expected == {
            "size": (result.cache_dir / part).stat().st_size,
            "sha256": cache_store.file_sha256(result.cache_dir / part),
        }


def test_a_dead_builders_staging_folder_goes_and_a_live_ones_stays(tok, small_csv, tmp_path, caplog):
    dead = tmp_path / f"other-1234{STAGING}999"  # another key, no builder holds its lock
    (dead / "data").mkdir(parents=True)
    (dead / "data" / "part-00000.arrow").write_bytes(b"half written")
    live = tmp_path / f"busy-5678{STAGING}998"  # another key whose builder is at work (holds its lock)
    (live / "data").mkdir(parents=True)
    fd = os.open(tmp_path / f"busy-5678{LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT)
    try:
        assert try_lock(fd) is True
        with caplog.at_level(logging.WARNING, logger="chef_genius"):
            load_tokenized(small_csv, tok, 64, 128, tmp_path)
        assert not dead.exists()
        assert live.is_dir()
        assert any(str(dead) in r.getMessage() for r in caplog.records)
    finally:
        os.close(fd)


def test_a_staging_folder_of_its_own_key_left_by_a_killed_run_goes(tok, small_csv, tmp_path):
    final = load_tokenized(small_csv, tok, 64, 128, tmp_path).cache_dir
    cache_store.discard(final)
    left = final.with_name(f"{final.name}{STAGING}4242")  # a tokenization killed with SIGKILL
    (left / "data").mkdir(parents=True)
    load_tokenized(small_csv, tok, 64, 128, tmp_path)
    assert not left.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [final.name]


RACE = """
import sys, time
from pathlib import Path
from chef_genius.data.tokenized import load_tokenized
from chef_genius.model.loading import load_tokenizer
tok = load_tokenizer(sys.argv[1])
go = Path(sys.argv[4])
while not go.exists():
    time.sleep(0.005)
result = load_tokenized(sys.argv[2], tok, 64, 128, sys.argv[3], num_proc=1)
print(len(result.dataset), result.from_cache, result.cache_dir.name)
"""


@pytest.mark.slow
def test_three_runs_started_together_on_one_fresh_cache_all_succeed(tiny_model, tmp_path):
    data = tmp_path / "recipes.csv"
    rows = list(csv.reader(SAMPLE_CSV.open(encoding="utf-8", newline="")))
    with open(data, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([rows[0]] + rows[1:] * 4)  # a second or more to tokenize
    cache, go = tmp_path / "cache", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(tiny_model), str(data), str(cache), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    time.sleep(8)  # every process has imported and waits at the start line
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in results]
    lines = [out.split() for out, _ in results]
    assert {line[0] for line in lines} == {"1600"} and len({line[2] for line in lines}) == 1
    assert sorted(line[1] for line in lines) == ["False", "True", "True"]  # one built, two read it
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [lines[0][2]]  # no staging folder left


def _sampled_spans(size):
    from chef_genius.data.fingerprint import _sampled

    return [(start, size if length is None else start + length) for start, length in _sampled(size)]


def test_a_same_length_edit_with_the_time_kept_is_never_served_from_the_cache(tok, tmp_path, caplog):
    """Over 3 MiB the folder's name samples the file; the edit lies between the samples, so only the
    content fingerprint in the cache's metadata tells the cache is stale."""
    data = tmp_path / "recipes.csv"
    rows = list(csv.reader(SAMPLE_CSV.open(encoding="utf-8", newline="")))
    with open(data, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([rows[0]] + rows[1:] * 15)  # about 4 MB
    cache = tmp_path / "cache"
    before = load_tokenized(data, tok, 64, 128, cache, num_proc=1)
    text = bytearray(data.read_bytes())
    spans = _sampled_spans(len(text))
    where = next(
        i
        for i in range(len(text) // 2, len(text))
        if chr(text[i]).islower() and chr(text[i + 1]).islower() and not any(a <= i < b for a, b in spans)
    )
    stat = data.stat()
    text[where] = ord("x") if text[where] != ord("x") else ord("y")
    data.write_bytes(bytes(text))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # cp -p, rsync -t: size and time kept
    with caplog.at_level(logging.WARNING, logger="chef_genius"):
        after = load_tokenized(data, tok, 64, 128, cache, num_proc=1)
    assert after.cache_dir == before.cache_dir  # the same folder name: its sampled key missed the edit
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "recipes.csv changed since it was built" in warnings[0]
    assert not after.from_cache
    assert (
        after.dataset["input_ids"] != before.dataset["input_ids"] or after.dataset["labels"] != before.dataset["labels"]
    )  # the edited recipe, as it is now
    assert load_tokenized(data, tok, 64, 128, cache, num_proc=1).from_cache


def _trusted_after(monkeypatch, tok, data, cache):
    """Tokenize, then open once more with the parts' and data file's writes old enough to be trusted
    (the racy window shortened for the test): the folder's memo now holds every digest."""
    from chef_genius.data import fingerprint

    monkeypatch.setattr(fingerprint, "RACY_SECONDS", 0.02)
    load_tokenized(data, tok, 64, 128, cache)
    time.sleep(0.05)
    monkeypatch.setattr(fingerprint, "_known", {})  # a later run
    return load_tokenized(data, tok, 64, 128, cache)


def test_a_rerun_reads_no_byte_of_the_parts_nor_of_the_data_file(tok, small_csv, tmp_path, monkeypatch):
    from chef_genius.data import fingerprint

    assert _trusted_after(monkeypatch, tok, small_csv, tmp_path).from_cache
    monkeypatch.setattr(fingerprint, "_known", {})

    def no_read(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(fingerprint, "file_sha256", no_read)
    monkeypatch.setattr(cache_store, "file_sha256", no_read)
    assert load_tokenized(small_csv, tok, 64, 128, tmp_path).from_cache


def test_a_part_damaged_after_its_digest_was_remembered_is_still_rebuilt(tok, small_csv, tmp_path, caplog, monkeypatch):
    from chef_genius.data import fingerprint

    clean = _trusted_after(monkeypatch, tok, small_csv, tmp_path)
    rows = clean.dataset["input_ids"]
    part = _part(clean)
    stat = part.stat()
    _flip_byte(part)
    os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and modification time as remembered
    del clean
    monkeypatch.setattr(fingerprint, "_known", {})
    with caplog.at_level(logging.WARNING, logger="chef_genius"):
        again = load_tokenized(small_csv, tok, 64, 128, tmp_path)
    assert not again.from_cache and again.dataset["input_ids"] == rows
    assert any("does not match its checksum" in r.getMessage() for r in caplog.records)
