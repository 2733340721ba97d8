"""Weights written by other tools: wrapper prefixes, sharded safetensors with their index and the older
``pytorch_model.bin``, loaded by every entry point (model loading, ``--pretrained-model``, resume,
generation) and checked / repaired by the doctor like a single ``model.safetensors``."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.doctor.cli import fix_all_main, verify_main
from chef_genius.errors import UserError, run_cli
from chef_genius.model.loading import load_model
from conftest import run_training, step_losses, train_args

WRAPPERS = ["_orig_mod.", "module.", "_orig_mod.module.", "module._orig_mod."]


def cli(main, *argv, capsys):
    capsys.readouterr()  # what earlier steps printed
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().out


def copy_without_weights(source, dest):
    dest.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and path.name not in (ckpt.WEIGHTS, ckpt.MANIFEST):
            shutil.copy(path, dest / path.name)
    return dest


def with_prefix(source, dest, prefix):
    from safetensors.torch import load_file, save_file

    copy_without_weights(source, dest)
    save_file(
        {prefix + k: v for k, v in load_file(source / ckpt.WEIGHTS).items()},
        dest / ckpt.WEIGHTS,
        metadata={"format": "pt"},
    )
    return dest


def sharded(source, dest):
    """``source``'s weights as ``save_pretrained`` shards them (six shards of the tiny model)."""
    from transformers import AutoModelForSeq2SeqLM

    copy_without_weights(source, dest)
    AutoModelForSeq2SeqLM.from_pretrained(source).save_pretrained(dest, max_shard_size="200KB")
    assert len(list(dest.glob("model-*-of-*.safetensors"))) > 1 and not (dest / ckpt.WEIGHTS).exists()
    return dest


def as_bin(source, dest):
    from safetensors.torch import load_file

    copy_without_weights(source, dest)
    torch.save(load_file(source / ckpt.WEIGHTS), dest / ckpt.WEIGHTS_BIN)
    return dest


def seal(folder):
    ckfiles.atomic_write_json(folder / ckpt.MANIFEST, ckmanifest.build_manifest(folder, ckpt.step_of(folder)))


def batch_loss(model, tokenizer) -> float:
    enc = tokenizer(["salt, pepper, egg"], return_tensors="pt")
    labels = tokenizer(["whisk the egg with salt"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.eval()(**enc, labels=labels).loss.item()


def generated(model_dir, capsys):
    from chef_genius.model.generate_cli import main as generate_main

    capsys.readouterr()
    assert (
        generate_main(
            [
                "--model",
                str(model_dir),
                "--ingredients",
                "egg, salt",
                "--json",
                "--seed",
                "1",
                "--max-new-tokens",
                "12",
                "--num-beams",
                "1",
            ]
        )
        == 0
    )
    return json.loads(capsys.readouterr().out)["results"]


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------
# wrapper prefixes: stripped with a warning, never random weights


@pytest.mark.parametrize("prefix", WRAPPERS)
def test_prefixed_folder_loads_the_trained_weights_with_a_warning(tiny_model, tmp_path, caplog, prefix):
    from transformers import AutoTokenizer

    folder = with_prefix(tiny_model, tmp_path / "wrapped", prefix)
    caplog.set_level(logging.WARNING)
    model = load_model(folder)
    assert "wrapper prefix" in caplog.text and "--fix" in caplog.text
    clean = load_model(tiny_model)
    assert same_weights(model, clean)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert batch_loss(model, tokenizer) == batch_loss(clean, tokenizer)


def test_pretrained_model_and_generation_from_a_prefixed_folder(
    tiny_model, small_csv, cache_dir, tmp_path, caplog, capsys
):
    folder = with_prefix(tiny_model, tmp_path / "compiled", "_orig_mod.")
    losses = {}
    for name, source in (("clean", tiny_model), ("wrapped", folder)):
        out = tmp_path / name
        assert (
            run_training(
                *train_args(
                    source, small_csv, out, cache_dir, "--max-steps", "2", "--save-steps", "100", "--eval-steps", "100"
                )
            )
            == 0
        )
        losses[name] = step_losses(out)
    assert losses["wrapped"] == losses["clean"] and len(losses["clean"]) == 2
    assert generated(folder, capsys) == generated(tiny_model, capsys)


def test_unknown_weight_name_is_an_error_naming_it(tiny_model, small_csv, cache_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = copy_without_weights(tiny_model, tmp_path / "renamed")
    tensors = load_file(tiny_model / ckpt.WEIGHTS)
    tensors["encoder.final_norm.weight"] = tensors.pop("encoder.final_layer_norm.weight")
    save_file(tensors, folder / ckpt.WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(UserError) as err:
        load_model(folder)
    assert "encoder.final_layer_norm.weight" in str(err.value) and "encoder.final_norm.weight" in str(err.value)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            lambda argv: run_training(*argv),
            train_args(folder, small_csv, tmp_path / "out", cache_dir, "--max-steps", "1"),
        )
    assert exit_info.value.code == 2 and "random weights" in capsys.readouterr().err


def test_fix_strips_prefixes_from_every_shard(run_dir, tmp_path, capsys):
    folder = tmp_path / "run" / "checkpoint-10"
    source = sharded(run_dir / "checkpoint-10", tmp_path / "plain")
    copy_without_weights(source, folder)
    from safetensors.torch import load_file, save_file

    for shard in source.glob("model-*.safetensors"):
        save_file(
            {"module." + k: v for k, v in load_file(shard).items()}, folder / shard.name, metadata={"format": "pt"}
        )
    index = json.loads((source / ckpt.WEIGHTS_INDEX).read_text())
    index["weight_map"] = {"module." + k: v for k, v in index["weight_map"].items()}
    (folder / ckpt.WEIGHTS_INDEX).write_text(json.dumps(index))
    (folder / ckpt.TRAINING_STATE).write_bytes((run_dir / "checkpoint-10" / ckpt.TRAINING_STATE).read_bytes())
    seal(folder)
    code, out = cli(verify_main, folder, "--json", capsys=capsys)
    assert code == 1 and "weights_prefixed" in {p["code"] for p in json.loads(out)["problems"]}
    code, out = cli(verify_main, folder, "--fix", "--json", capsys=capsys)
    assert code == 0 and "prefixes_stripped" in {r["code"] for r in json.loads(out)["repairs"]}
    assert same_weights(load_model(folder), load_model(run_dir / "checkpoint-10"))


# ---------------------------------------------------------------------------------------------
# sharded safetensors and pytorch_model.bin in checkpoints


@pytest.fixture(scope="module")
def run_dir(tiny_model, small_csv, cache_dir, tmp_path_factory):
    """A run stopped at step 10 of 24 (12 steps per epoch): checkpoint-5 and checkpoint-10."""
    out = tmp_path_factory.mktemp("formats") / "run"
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, "--stop-after-steps", "10")) == 0
    return out


@pytest.fixture(scope="module")
def resumed_losses(run_dir, tiny_model, small_csv, cache_dir, tmp_path_factory):
    """Losses of 3 steps resumed from the single-file checkpoint-10: what every layout must match."""
    run = shutil.copytree(run_dir, tmp_path_factory.mktemp("single") / "run")
    assert (
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                run,
                cache_dir,
                "--resume-from-checkpoint",
                run / "checkpoint-10",
                "--stop-after-steps",
                "3",
            )
        )
        == 0
    )
    return {s: v for s, v in step_losses(run).items() if s > 10}


def relayout(run_dir, tmp_path, how):
    """A copy of the run whose checkpoints keep their weights in another layout, manifests rebuilt."""
    run = tmp_path / "run"
    for source in ckpt.list_checkpoints(run_dir):
        how(source, run / source.name)
        seal(run / source.name)
    return run


def test_sharded_checkpoint_verifies_and_resumes_like_a_single_file(
    run_dir, resumed_losses, tiny_model, small_csv, cache_dir, tmp_path, capsys
):
    run = relayout(run_dir, tmp_path, sharded)
    folder = run / "checkpoint-10"
    code, out = cli(verify_main, folder, "--deep", capsys=capsys)
    assert code == 0, out
    assert "model weights readable (52 tensors in 6 shards)" in out
    assert "every tensor read in each of the 6 shards, all values finite" in out
    assert "sha256 of every file" in out
    code, out = cli(fix_all_main, run, "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["newest_resumable"] == str(folder)
    assert generated(folder, capsys) == generated(run_dir / "checkpoint-10", capsys)
    assert (
        run_training(
            *train_args(
                tiny_model, small_csv, run, cache_dir, "--resume-from-checkpoint", "latest", "--stop-after-steps", "3"
            )
        )
        == 0
    )
    assert {s: v for s, v in step_losses(run).items() if s > 10} == resumed_losses


def test_damaged_shards_are_found_per_shard(run_dir, tmp_path, capsys):
    run = relayout(run_dir, tmp_path, sharded)
    folder = run / "checkpoint-10"
    shards = sorted(folder.glob("model-*.safetensors"))
    data = bytearray(shards[2].read_bytes())
    data[-3] ^= 0xFF  # a flipped byte in the tensor data: only the sha256 of the shard shows it
    shards[2].write_bytes(bytes(data))
    code, out = cli(verify_main, folder, "--deep", "--json", capsys=capsys)
    report = json.loads(out)
    assert code == 1 and not report["resumable"]
    assert any(p["code"] == "weights_corrupt" and shards[2].name in p["message"] for p in report["problems"])
    assert report["resume_instead"] == str(run / "checkpoint-5")

    shards[3].write_bytes(shards[3].read_bytes()[:-100])
    code, out = cli(verify_main, folder, "--json", capsys=capsys)
    assert any(
        p["code"] == "weights_unreadable" and shards[3].name in p["message"] for p in json.loads(out)["problems"]
    )
    shards[4].unlink()
    shards[3].unlink()
    code, out = cli(verify_main, folder, "--fix", "--json", capsys=capsys)
    report = json.loads(out)
    assert code == 1 and not report["resumable"] and "weights_missing" in {p["code"] for p in report["problems"]}
    assert not [r for r in report["repairs"] if r["code"] == "manifest_rebuilt"]


def test_bin_checkpoint_resumes_and_fix_converts_keeping_the_original(
    run_dir, resumed_losses, tiny_model, small_csv, cache_dir, tmp_path, capsys
):
    run = relayout(run_dir, tmp_path, as_bin)
    folder = run / "checkpoint-10"
    original = (folder / ckpt.WEIGHTS_BIN).read_bytes()
    code, out = cli(verify_main, folder, "--deep", "--json", capsys=capsys)
    report = json.loads(out)
    assert code == 1 and report["resumable"] and [p["code"] for p in report["problems"]] == ["weights_bin"]

    resumed = shutil.copytree(run, tmp_path / "resumed")
    assert (
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                resumed,
                cache_dir,
                "--resume-from-checkpoint",
                resumed / "checkpoint-10",
                "--stop-after-steps",
                "3",
            )
        )
        == 0
    )
    assert {s: v for s, v in step_losses(resumed).items() if s > 10} == resumed_losses

    code, out = cli(verify_main, folder, "--fix", "--no-backup", "--json", capsys=capsys)
    report = json.loads(out)
    assert code == 0 and report["valid"], report
    assert "weights_converted" in {r["code"] for r in report["repairs"]}
    assert not (folder / ckpt.WEIGHTS_BIN).exists()
    assert [p.read_bytes() for p in folder.glob(f"backup-*/{ckpt.WEIGHTS_BIN}")] == [original]
    assert same_weights(load_model(folder), load_model(run_dir / "checkpoint-10"))


def test_unsafe_bin_is_never_unpickled(run_dir, tiny_model, tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    folder = copy_without_weights(run_dir / "checkpoint-10", tmp_path / "run" / "checkpoint-10")
    torch.save({"shared.weight": torch.zeros(2), "x": Payload()}, folder / ckpt.WEIGHTS_BIN)
    seal(folder)
    code, out = cli(verify_main, folder, "--fix", "--json", capsys=capsys)
    report = json.loads(out)
    assert code == 1 and "weights_unreadable" in {p["code"] for p in report["problems"]}
    assert any("not unpickled" in p["message"] for p in report["problems"])
    with pytest.raises(UserError):
        load_model(folder)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# fix_all says why a checkpoint is not resumable and what repairs it


def test_fix_all_names_reason_and_repair_and_the_newest_resumable(run_dir, tmp_path, capsys):
    run = shutil.copytree(run_dir, tmp_path / "run")
    for flags in ((), ("--dry-run",)):
        code, out = cli(fix_all_main, run, "--json", *flags, capsys=capsys)
        table = json.loads(out)
        assert code == 0 and table["newest_resumable"] == str(run / "checkpoint-10"), flags
        assert not [c for c in table["checkpoints"] if "reason" in c]

    (run / "checkpoint-10" / ckpt.TRAINING_STATE).unlink()  # no sibling records the run's shape
    shutil.rmtree(run / "checkpoint-5")
    weights = run / "checkpoint-10" / ckpt.WEIGHTS
    code, out = cli(fix_all_main, run, "--json", "--no-backup", capsys=capsys)
    entry = json.loads(out)["checkpoints"][0]
    assert code == 1 and json.loads(out)["newest_resumable"] is None
    assert entry["reason"].startswith("state_missing") and "--steps-per-epoch" in entry["repair"]
    code, out = cli(fix_all_main, run, capsys=capsys)
    assert "checkpoint-10: state_missing" in out and "repair: the steps per epoch are unknown" in out

    weights.write_bytes(weights.read_bytes()[:1000])
    code, out = cli(fix_all_main, run, "--json", capsys=capsys)
    entry = json.loads(out)["checkpoints"][0]
    assert entry["reason"].startswith("weights_unreadable") and "cannot be undone" in entry["repair"]


def test_prefixed_weights_under_a_stale_manifest_are_explained_and_taken_on_request(run_dir, tmp_path, capsys):
    """torch.compile's prefix written over the sealed model.safetensors: verify must not promise that --fix
    removes it (--fix will not bless a file that changed after the seal); --accept-changed-weights does,
    keeping the file as found."""
    from safetensors.torch import load_file, save_file

    run = shutil.copytree(run_dir, tmp_path / "run")
    folder = run / "checkpoint-10"
    save_file(
        {"_orig_mod." + k: v for k, v in load_file(folder / ckpt.WEIGHTS).items()},
        folder / ckpt.WEIGHTS,
        metadata={"format": "pt"},
    )
    found = (folder / ckpt.WEIGHTS).read_bytes()
    code, out = cli(verify_main, folder, capsys=capsys)
    line = next(text for text in out.splitlines() if "weight names carry" in text)
    assert code == 1 and "--fix removes it" not in line
    assert "changed after the manifest sealed them" in line and "--fix --accept-changed-weights" in line
    code, out = cli(verify_main, folder, "--fix", capsys=capsys)
    assert code == 1 and "--fix --accept-changed-weights" in out
    assert (folder / ckpt.WEIGHTS).read_bytes() == found  # a plain --fix blesses nothing
    code, out = cli(verify_main, folder, "--fix", "--accept-changed-weights", "--no-backup", "--json", capsys=capsys)
    report = json.loads(out)
    assert code == 0 and report["valid"], report
    assert {"weights_accepted", "prefixes_stripped", "manifest_rebuilt"} <= {r["code"] for r in report["repairs"]}
    kept = list(folder.glob(f"backup-*/{ckpt.WEIGHTS}"))
    assert len(kept) == 1 and kept[0].read_bytes() == found  # the original, even with --no-backup
    assert same_weights(load_model(folder), load_model(run_dir / "checkpoint-10"))
    assert cli(verify_main, folder, "--deep", capsys=capsys)[0] == 0
