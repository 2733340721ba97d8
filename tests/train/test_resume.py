"""Exact resume: the resumed run's per-step losses equal the uninterrupted run's, bit for bit."""

import re
import shutil

import pytest

from chef_genius.errors import UserError
from conftest import run_training, step_losses, train_args


@pytest.fixture(scope="module")
def reference(tiny_model, small_csv, cache_dir, tmp_path_factory):
    """An uninterrupted 2-epoch run with accumulation 2 and 2 loader workers."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert (
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                out,
                cache_dir,
                "--gradient-accumulation-steps",
                "2",
                "--dataloader-num-workers",
                "2",
                "--save-steps",
                "3",
            )
        )
        == 0
    )
    return out


def _resume(reference, tiny_model, small_csv, cache_dir, tmp_path, step, *extra):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(reference / f"checkpoint-{step}", out / f"checkpoint-{step}")
    code = run_training(
        *train_args(
            tiny_model,
            small_csv,
            out,
            cache_dir,
            "--gradient-accumulation-steps",
            "2",
            "--dataloader-num-workers",
            "2",
            "--save-steps",
            "3",
            "--resume-from-checkpoint",
            str(out / f"checkpoint-{step}"),
            *extra,
        )
    )
    return code, out


# 94 training recipes / batch 8 = 12 micro-batches = 6 optimizer steps per epoch; 12 steps in all.
@pytest.mark.parametrize("step", [3, 6, 9], ids=["mid-epoch", "epoch-boundary", "mid-second-epoch"])
def test_resumed_losses_are_bitwise_equal(reference, tiny_model, small_csv, cache_dir, tmp_path, step):
    code, out = _resume(reference, tiny_model, small_csv, cache_dir, tmp_path, step)
    assert code == 0
    expected, got = step_losses(reference), step_losses(out)
    assert sorted(expected) == list(range(1, 13))
    assert sorted(got) == list(range(step + 1, 13))
    assert [got[s] for s in got] == [expected[s] for s in got]  # exact float equality, no tolerance


def _as_todays_main(folder) -> None:
    """Rewrite ``folder``'s training state in the layout main wrote until format version 2 (the epoch at
    the top and in ``run_state`` beside ``data_position``'s, rank 0's RNG beside the per-rank list),
    with its manifest, as that code left them."""
    import torch

    from chef_genius.checkpoint import files as ckfiles
    from chef_genius.checkpoint import layout as ckpt
    from chef_genius.checkpoint import manifest as ckmanifest
    from chef_genius.checkpoint import training_state as ckstate

    state = ckstate.load_training_state(folder)
    epoch = state["data_position"]["epoch"]
    old = {
        **state,
        "format_version": 1,
        "epoch": epoch,
        "run_state": {"epoch": epoch, **state["run_state"]},
        "rng_states": state[ckstate.RNG_PER_RANK][0],
    }
    torch.save(old, folder / ckpt.TRAINING_STATE)
    manifest = ckmanifest.build_manifest(folder, state["global_step"])
    ckfiles.atomic_write_json(folder / ckpt.MANIFEST, {**manifest, "format_version": 1})


@pytest.mark.parametrize("step", [3, 6], ids=["mid-epoch", "epoch-boundary"])
def test_a_checkpoint_of_the_previous_layout_verifies_and_resumes_bitwise(
    reference, tiny_model, small_csv, cache_dir, tmp_path, step
):
    from chef_genius.checkpoint import manifest as ckmanifest
    from chef_genius.checkpoint import training_state as ckstate
    from chef_genius.doctor import verify

    old = tmp_path / "old"
    shutil.copytree(reference / f"checkpoint-{step}", old / f"checkpoint-{step}")
    _as_todays_main(old / f"checkpoint-{step}")
    state = ckstate.load_training_state(old / f"checkpoint-{step}")
    assert ckstate.state_version(state) == 1 and "rng_states" in state  # the old layout, as written
    report = verify.verify(old / f"checkpoint-{step}")
    assert report.valid and report.resumable and not report.problems, report.problems
    assert (report.global_step, report.epoch) == (step, step // 6)
    assert ckmanifest.manifest_problems(old / f"checkpoint-{step}", verify_hashes=True) == []
    code, out = _resume(old, tiny_model, small_csv, cache_dir, tmp_path, step)
    assert code == 0
    expected, got = step_losses(reference), step_losses(out)
    assert sorted(got) == list(range(step + 1, 13))
    assert [got[s] for s in got] == [expected[s] for s in got]  # exact float equality, no tolerance
    assert ckstate.state_version(ckstate.load_training_state(out / "checkpoint-12")) == 2  # written anew


def test_resume_never_overwrites_its_checkpoint(reference, tiny_model, small_csv, cache_dir, tmp_path):
    before = (reference / "checkpoint-6" / "model.safetensors").read_bytes()
    code, out = _resume(reference, tiny_model, small_csv, cache_dir, tmp_path, 6)
    assert code == 0
    assert (out / "checkpoint-6" / "model.safetensors").read_bytes() == before
    assert (out / "checkpoint-12" / "manifest.json").is_file()


def test_resume_refuses_a_changed_batch_size(reference, tiny_model, small_csv, cache_dir, tmp_path):
    with pytest.raises(UserError, match="batch-size 8 -> 4") as err:
        _resume(reference, tiny_model, small_csv, cache_dir, tmp_path, 6, "--batch-size", "4")
    assert err.value.exit_code == 2


def test_resume_refuses_another_data_file_unless_allowed(reference, tiny_model, sample_csv, cache_dir, tmp_path):
    with pytest.raises(UserError, match="does not match the checkpoint"):
        _resume(reference, tiny_model, sample_csv, cache_dir, tmp_path, 6)
    shutil.rmtree(tmp_path / "run")
    code, out = _resume(
        reference, tiny_model, sample_csv, cache_dir, tmp_path, 6, "--allow-config-change", "--max-steps", "8"
    )
    assert code == 0 and (out / "checkpoint-8").is_dir()


def test_fresh_run_into_a_folder_with_checkpoints_is_refused(reference, tiny_model, small_csv, cache_dir):
    with pytest.raises(UserError, match="already holds checkpoints"):
        run_training(*train_args(tiny_model, small_csv, reference, cache_dir))


def test_latest_and_auto_resume(reference, tiny_model, small_csv, cache_dir, tmp_path):
    out = tmp_path / "auto"
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, "--auto-resume", "--max-steps", "4")) == 0
    assert (
        run_training(
            *train_args(tiny_model, small_csv, out, cache_dir, "--resume-from-checkpoint", "latest", "--max-steps", "6")
        )
        == 0
    )
    assert sorted(step_losses(out)) == list(range(1, 7))


def _short_resume(out, step, *extra) -> list[str]:
    return ["--model-output", str(out), "--resume-from-checkpoint", str(out / f"checkpoint-{step}"), *map(str, extra)]


def test_a_larger_max_steps_past_the_last_epoch_trains_to_it(
    reference, tiny_model, small_csv, cache_dir, tmp_path, capsys
):
    """The finished 2-epoch run (6 steps per epoch) resumed with --max-steps 20 trains steps 13 to 20 in
    two more epochs, and the last line counts the run's epochs, not the command line's default 3."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(reference / "checkpoint-12", out / "checkpoint-12")
    capsys.readouterr()
    assert run_training(*_short_resume(out, 12, "--max-steps", 20, "--cache-dir", cache_dir)) == 0
    assert sorted(step_losses(out)) == list(range(13, 21))
    assert "done: step 20, epoch 4/4" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, reason",
    [
        (("--max-steps", 10), "is at step 12 and --max-steps 10 ends the run at step 10: nothing would be trained"),
        (("--max-steps", 15, "--epochs", 2), "--max-steps 15 is past the end of --epochs 2 (step 12)"),
    ],
    ids=["end-before-the-checkpoint", "epochs-end-first"],
)
def test_an_end_the_resume_cannot_train_to_is_refused(reference, cache_dir, tmp_path, extra, reason):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(reference / "checkpoint-12", out / "checkpoint-12")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match=re.escape(reason)) as err:
        run_training(*_short_resume(out, 12, "--cache-dir", cache_dir, *extra))
    assert err.value.exit_code == 2
    assert sorted(p.name for p in out.iterdir()) == before  # no new checkpoint, no final model


def test_a_same_length_edit_with_the_time_kept_is_refused_on_resume_and_never_read_from_the_cache(
    tiny_model, tmp_path, caplog
):
    import csv
    import logging
    import os
    from chef_genius.checkpoint.manager import read_checkpoint
    from chef_genius.data.fingerprint import _sampled, content_identity
    from conftest import SAMPLE_CSV

    data, out, cache = tmp_path / "recipes.csv", tmp_path / "run", tmp_path / "cache"
    rows = list(csv.reader(SAMPLE_CSV.open(encoding="utf-8", newline="")))
    with open(data, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([rows[0]] + rows[1:] * 13)  # over 3 MiB: the cache folder's key samples it
    flags = (
        "--max-steps",
        4,
        "--save-steps",
        2,
        "--eval-steps",
        100,
        "--max-source-length",
        32,
        "--max-target-length",
        64,
    )
    assert run_training(*train_args(tiny_model, data, out, cache, *flags, "--stop-after-steps", 2)) == 0
    text = bytearray(data.read_bytes())
    sampled = [(a, len(text) if n is None else a + n) for a, n in _sampled(len(text))]
    where = next(
        i
        for i in range(len(text) // 2, len(text))
        if chr(text[i]).islower() and not any(a <= i < b for a, b in sampled)
    )
    stat = data.stat()
    text[where] = ord("x") if text[where] != ord("x") else ord("y")  # one recipe edited, same length
    data.write_bytes(bytes(text))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # modification time kept (cp -p, rsync -t)
    resume = train_args(tiny_model, data, out, cache, *flags, "--resume-from-checkpoint", "latest")
    with pytest.raises(
        UserError,
        match=r"--data recipes.csv \(\d+ bytes\) -> recipes.csv \(\d+ bytes\), "
        r"other content",
    ) as err:
        run_training(*resume)
    assert err.value.exit_code == 2
    with caplog.at_level(logging.WARNING, logger="chef_genius"):
        assert run_training(*resume, "--allow-config-change") == 0
    assert any("recipes.csv changed since it was built" in r.getMessage() for r in caplog.records)  # re-tokenized
    assert read_checkpoint(out / "checkpoint-4").settings["data_identity"] == content_identity(data)
