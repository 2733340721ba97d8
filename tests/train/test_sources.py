"""Several --data sources in training: each weight's share of an epoch, the order independent of the
command line's, twins across sources removed and listed, ranks, the resume's identity check and an
exact resume of a mixed run."""

from __future__ import annotations

import collections
import contextlib
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from chef_genius.data.fingerprint import content_sha256
from chef_genius.errors import UserError
from chef_genius.model.loading import load_tokenizer
from chef_genius.train import settings
from chef_genius.train.config import parse_args
from chef_genius.train.data_setup import make_data
from conftest import SAMPLE_CSV, run_training, step_losses, train_args


class _Rank:
    """What make_data asks of accelerate's Accelerator, for rank ``rank`` of ``world`` processes."""

    def __init__(self, world: int = 1, rank: int = 0):
        self.num_processes, self.process_index, self.device = world, rank, torch.device("cpu")
        self.is_main_process = rank == 0

    def main_process_first(self):
        return contextlib.nullcontext()

    def wait_for_everyone(self):
        pass


@pytest.fixture(scope="module")
def foodcom_jsonl(tmp_path_factory) -> Path:
    """40 other sample recipes in the Food.com layout (name, ingredients, steps) as JSON lines, and a
    re-cased copy of small.csv's first recipe: a twin across the two sources."""
    with open(SAMPLE_CSV, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    picked = rows[200:240] + [dict(rows[0], title=rows[0]["title"].upper())]
    path = tmp_path_factory.mktemp("foodcom") / "foodcom.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for r in picked:
            record = {"name": r["title"], "ingredients": json.loads(r["ingredients"]), "steps": r["directions"]}
            handle.write(json.dumps(record) + "\n")
    return path


def _data(tiny_model, out, cache_dir, *sources, world=1, rank=0, extra=()):
    config = parse_args(train_args(tiny_model, sources[0], out, cache_dir, "--data", *sources, *extra))
    tokenizer = load_tokenizer(str(tiny_model))
    return make_data(config, tokenizer, _Rank(world, rank), out, tokenizer.pad_token_id)


def _per_source(data, counts) -> list[collections.Counter]:
    """How often each training recipe of each source is in the epoch the sampler iterates."""
    offsets = np.concatenate([[0], np.cumsum(counts)])
    seen = [collections.Counter() for _ in counts]
    for batch in data.sampler:
        for i in batch:
            if i >= 0:
                s = int(np.searchsorted(offsets, i, side="right")) - 1
                seen[s][i - offsets[s]] += 1
    return seen


@pytest.mark.parametrize("weight", ["1", "2", "0.5"])
def test_a_weight_sets_its_sources_share_of_the_epoch(
    tiny_model, small_csv, foodcom_jsonl, cache_dir, tmp_path, weight
):
    data = _data(tiny_model, tmp_path / "run", cache_dir, small_csv, f"{foodcom_jsonl}:{weight}")
    by_name = {Path(s["data"]).name: s for s in data.sources}
    csv_rows, food_rows = by_name["small.csv"]["training_recipes"], by_name["foodcom.jsonl"]["training_recipes"]
    assert by_name["small.csv"]["per_epoch"] == csv_rows
    assert by_name["foodcom.jsonl"]["per_epoch"] == int(np.floor(float(weight) * food_rows + 0.5))
    assert data.sampler.num_samples == csv_rows + by_name["foodcom.jsonl"]["per_epoch"]
    assert data.sampler.position.mixture is not None  # the checkpoint's data position records the mixture
    counts = [s["training_recipes"] for s in data.sources]
    seen = _per_source(data, counts)
    for s, got in zip(data.sources, seen):
        n = s["training_recipes"]
        if s["weight"] == 1:
            assert sorted(got) == list(range(n)) and set(got.values()) == {1}  # every recipe exactly once
        elif s["weight"] == 2:
            assert sorted(got) == list(range(n)) and set(got.values()) == {2}  # every recipe exactly twice
        else:
            assert sum(got.values()) == s["per_epoch"] and set(got.values()) == {1}  # a half, no repeats


def test_the_order_of_data_changes_neither_the_samples_nor_the_identity(
    tiny_model, small_csv, foodcom_jsonl, cache_dir, tmp_path
):
    from chef_genius.data import mixture

    one = _data(tiny_model, tmp_path / "a", cache_dir, small_csv, f"{foodcom_jsonl}:0.5")
    two = _data(tiny_model, tmp_path / "b", cache_dir, f"{foodcom_jsonl}:0.5", small_csv)
    assert [list(b) for b in one.sampler] == [list(b) for b in two.sampler]
    assert [one.train[i] for i in range(len(one.train))] == [two.train[i] for i in range(len(two.train))]
    assert mixture.identity(mixture.parse_sources([str(small_csv), f"{foodcom_jsonl}:0.5"])) == mixture.identity(
        mixture.parse_sources([f"{foodcom_jsonl}:0.5", str(small_csv)])
    )


def test_a_twin_across_sources_is_removed_and_listed_with_its_source(
    tiny_model, small_csv, foodcom_jsonl, cache_dir, tmp_path
):
    out = tmp_path / "run"
    out.mkdir()
    data = _data(tiny_model, out, cache_dir, small_csv, foodcom_jsonl)
    data.records.write(out)
    with open(out / "removed_duplicates.csv", encoding="utf-8") as handle:
        across = [r for r in csv.DictReader(handle) if r["kind"].endswith("_across")]
    # the later source in the canonical order (by content) loses its copy, whatever the command line says
    earlier, later = sorted([small_csv, foodcom_jsonl], key=content_sha256)
    assert len(across) == 1 and across[0]["kind"] == "exact_across"
    assert across[0]["file"] == str(later) and across[0]["twin_file"] == str(earlier)
    assert across[0]["title"].lower() == across[0]["twin_title"].lower()
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["dedup"]["found"]["exact_across"] == 1
    removed = {Path(s["data"]).name: s["duplicates"]["exact_across"] for s in summary["sources"]}
    assert removed == {later.name: 1, earlier.name: 0}
    assert len(list(cache_dir.glob("across-*.npy"))) >= 1  # the decision is kept in the cache: a rerun reads it
    again = _data(tiny_model, out, cache_dir, foodcom_jsonl, small_csv)
    assert np.array_equal(again.train.indices, data.train.indices)


def test_two_ranks_share_a_weighted_epoch(tiny_model, small_csv, foodcom_jsonl, cache_dir, tmp_path):
    seen = collections.Counter()
    for rank in (0, 1):
        data = _data(tiny_model, tmp_path / "run", cache_dir, small_csv, f"{foodcom_jsonl}:2", world=2, rank=rank)
        for batch in data.loader:
            seen.update(i for i in batch["sample_index"].tolist() if i >= 0)
    expected = collections.Counter(data.sampler.mixture.rows(data.sampler.seed, 0).tolist())
    assert seen == expected and sum(seen.values()) == data.sampler.num_samples


def _mixed_state(*sources) -> dict:
    from chef_genius.data import mixture

    config = parse_args(["--data", *map(str, sources)])
    hyper = {**config.to_dict(), "data_identity": mixture.identity(mixture.parse_sources(config.data))}
    hyper.pop("resume_from_checkpoint", None)
    return {"global_step": 3, "hyperparameters": hyper}


def test_a_changed_added_or_removed_source_is_refused_unless_allowed(small_csv, foodcom_jsonl, tmp_path):
    third = tmp_path / "third.csv"
    shutil.copy(SAMPLE_CSV, third)
    saved = _mixed_state(small_csv, f"{foodcom_jsonl}:0.5")
    same = settings.settle(parse_args(["--resume", "latest", "--data", f"{foodcom_jsonl}:0.5", str(small_csv)]), saved)
    assert sorted(same.data) == sorted([str(small_csv), f"{foodcom_jsonl}:0.5"])  # any order: the same sources
    assert settings.settle(parse_args(["--resume", "latest"]), saved).data == saved["hyperparameters"]["data"]
    for given, said in (
        ([str(small_csv), f"{foodcom_jsonl}:2"], "foodcom.jsonl weight 0.5 -> 2"),
        ([str(small_csv), f"{foodcom_jsonl}:0.5", str(third)], "third.csv added"),
        ([str(small_csv)], "foodcom.jsonl removed"),
    ):
        with pytest.raises(UserError, match=said) as err:
            settings.settle(parse_args(["--resume", "latest", "--data", *given]), saved)
        assert err.value.exit_code == 2
        allowed = settings.settle(parse_args(["--resume", "latest", "--allow-config-change", "--data", *given]), saved)
        assert allowed.data == given


def test_streamed_sources_are_interleaved_by_weight(small_csv, foodcom_jsonl):
    from chef_genius.data.mixture import Mixture, canonical, parse_sources
    from chef_genius.data.readers import ReadStats, read_examples
    from chef_genius.data.streaming import mixed_examples

    sources = canonical(parse_sources([str(small_csv), f"{foodcom_jsonl}:2"]))
    texts = [[e["target"] for e in read_examples(s.path, ReadStats())] for s in sources]
    mix = Mixture(tuple(map(len, texts)), tuple(s.weight for s in sources))
    epoch = [e["target"] for e in mixed_examples([s.path for s in sources], mix, 42, 0)]
    expected = collections.Counter()
    for s, t in zip(sources, texts):
        expected.update({x: int(s.weight) * n for x, n in collections.Counter(t).items()})
    assert collections.Counter(epoch) == expected  # weight 1 once, weight 2 twice, over both files
    food = set(texts[[s.weight for s in sources].index(2.0)])
    first_half = sum(t in food for t in epoch[: len(epoch) // 2])
    assert 0.3 < first_half / (len(epoch) // 2) < 0.7  # interleaved, not one file after the other
    assert epoch == [e["target"] for e in mixed_examples([s.path for s in sources], mix, 42, 0)]  # pure


def test_a_streamed_mixture_is_shared_by_ranks_and_resumes_mid_epoch(
    tiny_model, small_csv, foodcom_jsonl, cache_dir, tmp_path
):
    flags = ("--streaming", "--eval-split-ratio", "0", "--dedup", "off")
    given = (small_csv, f"{foodcom_jsonl}:0.5")
    seen = collections.Counter()
    for rank in (0, 1):
        data = _data(tiny_model, tmp_path / "run", cache_dir, *given, world=2, rank=rank, extra=flags)
        for batch in data.loader:
            seen.update(i for i in batch["sample_index"].tolist() if i >= 0)
    assert sorted(seen) == list(range(data.sampler.num_samples)) and set(seen.values()) == {1}
    assert {s["per_epoch"] for s in data.sources} == {96, 21}  # 96 once, half of 41 rounded up
    whole = _data(tiny_model, tmp_path / "run", cache_dir, *given, extra=flags)
    batches = [b["input_ids"] for b in whole.loader]
    resumed = _data(tiny_model, tmp_path / "run", cache_dir, *given, extra=flags)
    resumed.sampler.set_position(0, 8 * 5)  # after 5 batches of 8: what a resume does
    tail = [b["input_ids"] for b in resumed.loader]
    assert len(tail) == len(batches) - 5 and all(torch.equal(a, b) for a, b in zip(tail, batches[5:]))


def test_a_stopped_mixed_run_resumes_bitwise(tiny_model, small_csv, foodcom_jsonl, cache_dir, tmp_path):
    mixed = ("--data", small_csv, f"{foodcom_jsonl}:0.5", "--epochs", "2", "--save-steps", "4")
    reference = tmp_path / "reference"
    assert run_training(*train_args(tiny_model, small_csv, reference, cache_dir, *mixed)) == 0
    expected = step_losses(reference)
    last = max(expected)
    saved = json.loads(
        next(line for line in (reference / "metrics.jsonl").read_text().splitlines() if '"type": "data"' in line)
    )
    assert {Path(s["data"]).name for s in saved["sources"]} == {"small.csv", "foodcom.jsonl"}
    from chef_genius.checkpoint import training_state as ckstate
    from chef_genius.checkpoint.manager import read_checkpoint

    checkpoint = read_checkpoint(reference / "checkpoint-4")
    assert checkpoint.settings["data_sources"] == saved["sources"]  # the per-source counts in every checkpoint
    assert [w for _, w in checkpoint.slices[ckstate.DATA_POSITION]["mixture"]] == [
        s["weight"] for s in saved["sources"]
    ]
    out = tmp_path / "resumed"
    out.mkdir()
    step = 20  # in the second epoch (about 94 + 20 samples an epoch, batch 8: 15 steps), whose half is drawn anew
    assert last // 2 < step < last and step % 4 == 0
    shutil.copytree(reference / f"checkpoint-{step}", out / f"checkpoint-{step}")
    resume = ("--resume-from-checkpoint", out / f"checkpoint-{step}")
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, *mixed, *resume)) == 0
    got = step_losses(out)
    assert sorted(got) == list(range(step + 1, last + 1))
    assert [got[s] for s in sorted(got)] == [expected[s] for s in sorted(got)]  # exact float equality

    changed = tmp_path / "changed"  # the same checkpoint resumed without one of its sources
    changed.mkdir()
    shutil.copytree(reference / f"checkpoint-{step}", changed / f"checkpoint-{step}")
    again = ("--data", small_csv, *mixed[3:], "--resume-from-checkpoint", changed / f"checkpoint-{step}")
    with pytest.raises(UserError, match="foodcom.jsonl removed") as err:
        run_training(*train_args(tiny_model, small_csv, changed, cache_dir, *again))
    assert err.value.exit_code == 2
    assert run_training(*train_args(tiny_model, small_csv, changed, cache_dir, *again, "--allow-config-change")) == 0


def test_two_launched_processes_train_each_sample_of_a_weighted_epoch(
    tiny_model, small_csv, foodcom_jsonl, cache_dir, tmp_path
):
    import os
    import subprocess
    import sys

    from chef_genius.data.mixture import Mixture
    from chef_genius.train.distributed import SAMPLE_LOG_ENV
    from conftest import REPO

    out, sample_log = tmp_path / "run", tmp_path / "samples"
    args = train_args(
        tiny_model, small_csv, out, cache_dir, "--data", small_csv, f"{foodcom_jsonl}:1.5", "--epochs", "1"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **{SAMPLE_LOG_ENV: str(sample_log)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*cmd, str(REPO / "cli" / "complete_optimized_training.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = collections.Counter()
    for path in sample_log.glob("rank-*.txt"):
        for line in path.read_text().splitlines():
            epoch, index = map(int, line.split())
            seen[index] += epoch == 0
    sources = json.loads((out / "data_summary.json").read_text())["sources"]  # canonical order
    mix = Mixture(tuple(s["training_recipes"] for s in sources), tuple(s["weight"] for s in sources))
    assert seen == collections.Counter(mix.rows(42, 0).tolist())  # the weighted epoch, each sample as often as drawn


def test_evaluate_recipes_needs_data_for_a_run_of_several_sources(monkeypatch, small_csv, foodcom_jsonl):
    import argparse

    from chef_genius.evaluation import cli as evaluation

    saved = {"seed": 42, "dedup": "off", "eval_split_ratio": 0.05}
    args = argparse.Namespace(data=None, max_recipes=3)
    monkeypatch.setattr(
        evaluation, "_run_settings", lambda models: {**saved, "data": [str(small_csv), str(foodcom_jsonl)]}
    )
    with pytest.raises(UserError, match="several --data sources"):
        evaluation.held_out_recipes(args, [])
    monkeypatch.setattr(evaluation, "_run_settings", lambda models: {**saved, "data": [str(small_csv)]})
    recipes, where = evaluation.held_out_recipes(args, [])  # one source, saved as a list: its split, as before
    assert len(recipes) == 3 and where == f"{small_csv} (the run's validation split)"


def test_a_new_run_on_cached_sources_reads_no_data_byte_and_writes_no_records(
    tiny_model, small_csv, foodcom_jsonl, cache_dir, tmp_path, monkeypatch
):
    """A second run on cached sources, in a new run folder: the sources' canonical order takes the files'
    digests from the cache root's memo, and the audit and the signatures come from the cache, where the
    first run wrote them (a 2.7M-recipe mixture spent 3.5 s hashing and 8 s writing them every start)."""
    import time

    from chef_genius.data import corpus, fingerprint
    from chef_genius.data import training_set as training_set_mod

    monkeypatch.setattr(fingerprint, "RACY_SECONDS", 0.02)
    given = ("--data", str(small_csv), str(foodcom_jsonl), "--max-steps", "1")
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_training(*train_args(tiny_model, small_csv, first, cache_dir, *given)) == 0
    time.sleep(0.05)
    monkeypatch.setattr(fingerprint, "_known", {})  # a later process
    data_files = {Path(small_csv).resolve(), Path(foodcom_jsonl).resolve()}
    read = fingerprint.file_sha256

    def not_the_data(path):
        assert Path(path).resolve() not in data_files, f"{path} was read again"
        return read(path)

    def not_again(*_):
        raise AssertionError("written again")

    monkeypatch.setattr(fingerprint, "file_sha256", not_the_data)
    monkeypatch.setattr(corpus, "write_audit", not_again)
    monkeypatch.setattr(training_set_mod, "write_signatures", not_again)
    assert run_training(*train_args(tiny_model, small_csv, second, cache_dir, *given)) == 0
    for name in (corpus.AUDIT_FILE, corpus.SIGNATURES_FILE):
        assert (second / name).read_bytes() == (first / name).read_bytes()
    with open(second / corpus.AUDIT_FILE, encoding="utf-8") as handle:
        assert [r["kind"] for r in csv.DictReader(handle)].count("exact_across") == 1


def test_with_dedup_keep_a_twin_across_sources_is_listed_trained_on_and_held_out_with_its_twin(
    tiny_model, small_csv, foodcom_jsonl, cache_dir, tmp_path
):
    sides = {}
    for mode in ("keep", "remove"):
        out = tmp_path / mode
        out.mkdir()
        data = _data(tiny_model, out, cache_dir, small_csv, foodcom_jsonl, extra=("--dedup", mode))
        data.records.write(out)
        ts = data.records.training
        later = ts.sources[1]
        (twin,) = later.across  # small.csv's first recipe, re-cased in foodcom.jsonl
        earlier = ts.sources[twin.twin_source]
        sides[mode] = (
            ("train" if twin.row in later.train_rows else "eval" if twin.row in later.eval_rows else "removed"),
            "train" if twin.twin in earlier.train_rows else "eval",
        )
        with open(out / "removed_duplicates.csv", encoding="utf-8") as handle:
            assert [r["kind"] for r in csv.DictReader(handle)].count("exact_across") == 1  # listed either way
    assert sides["keep"][0] == sides["keep"][1]  # trained on, on its twin's side of the split
    assert sides["remove"][0] == "removed" and sides["remove"][1] == sides["keep"][1]


def test_a_streamed_mixture_leaves_out_the_twins_the_cached_path_removes(
    tiny_model, small_csv, foodcom_jsonl, cache_dir, tmp_path
):
    from chef_genius.data import dedup
    from chef_genius.data.mixture import Mixture
    from chef_genius.data.streaming import mixed_examples

    out = tmp_path / "run"
    out.mkdir()
    flags = ("--streaming", "--eval-split-ratio", "0")
    data = _data(tiny_model, out, cache_dir, small_csv, foodcom_jsonl, extra=flags)
    data.records.write(out)
    ts = data.records.training
    paths, kept = [d.source.path for d in ts.sources], [d.train_rows for d in ts.sources]
    streamed = [dedup.normal_form(e["target"]) for e in mixed_examples(paths, ts.mixture, 42, 0, kept=kept)]
    whole = Mixture(tuple(len(d.found.result.keys) for d in ts.sources), (1.0, 1.0))  # every usable row
    everything = [dedup.normal_form(e["target"]) for e in mixed_examples(paths, whole, 42, 0)]
    assert len(set(everything)) < len(everything)  # small.csv's first recipe, re-cased in foodcom.jsonl
    assert len(set(streamed)) == len(streamed)  # the twin is not streamed
    cached = _data(tiny_model, tmp_path / "cached", cache_dir, small_csv, foodcom_jsonl, extra=flags[1:])
    assert len(streamed) == data.sampler.num_samples == len(cached.train)
    seen = sum(int((batch["sample_index"] >= 0).sum()) for batch in data.loader)
    assert seen == len(streamed)  # what the loader trains on
    with open(out / "removed_duplicates.csv", encoding="utf-8") as handle:
        assert [r["kind"] for r in csv.DictReader(handle)].count("exact_across") == 1
