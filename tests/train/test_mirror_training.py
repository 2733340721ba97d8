"""Training with ``--checkpoint-mirror``: a fresh machine resumes from the mirror bit for bit, the mirror is
inherited on resume, a mirror that cannot be used is refused before training, upload failures follow
``--on-save-error``; Slurm: SIGUSR1 saves and exits 75, ``--requeue-on-preemption`` requeues the job
once the checkpoint is committed."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import time

import pytest

pytest.importorskip("fsspec")

from chef_genius.checkpoint import layout as ckpt  # noqa: E402
from chef_genius.checkpoint import remote  # noqa: E402
from chef_genius.checkpoint.manifest import manifest_problems  # noqa: E402
from chef_genius.checkpoint.mirror import Mirror  # noqa: E402
from chef_genius.errors import EXIT_PREEMPTED, EXIT_SAVE, EXIT_USAGE, run_cli  # noqa: E402
from chef_genius.train.cli import main  # noqa: E402
from chef_genius.train.trainer import Trainer  # noqa: E402
from conftest import step_losses, train_args  # noqa: E402

QUICK = ("--max-steps", 6, "--save-steps", 3, "--max-source-length", 32, "--max-target-length", 64, "--eval-steps", 100)


def _exit(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(a) for a in argv])
    return exc.value.code, capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def reference(tiny_model, small_csv, cache_dir, tmp_path_factory):
    """The uninterrupted 6-step run."""
    out = tmp_path_factory.mktemp("mirror-reference") / "run"
    assert main(train_args(tiny_model, small_csv, out, cache_dir, *QUICK)) == 0
    return step_losses(out)


def test_a_fresh_machine_resumes_from_the_s3_mirror_bit_for_bit(
    reference, s3_env, tiny_model, small_csv, cache_dir, tmp_path
):
    url = s3_env.make_bucket("fresh-machine") + "/tiny"
    first = tmp_path / "machine-1" / "run"
    args = (tiny_model, small_csv)
    assert main(train_args(*args, first, cache_dir, *QUICK, "--stop-after-steps", 3, "--checkpoint-mirror", url)) == 0
    store = remote.open_store(url)
    assert store.steps() == [3] and store.problem("checkpoint-3") is None
    shutil.rmtree(first.parent)  # the machine is gone with its disk

    second = tmp_path / "machine-2" / "run"  # a new machine: an empty, missing run folder
    assert (
        main(
            train_args(
                *args, second, cache_dir, *QUICK, "--auto-resume", "--stop-after-steps", 1, "--checkpoint-mirror", url
            )
        )
        == 0
    )
    assert [p.name for p in ckpt.list_checkpoints(second)] == ["checkpoint-3", "checkpoint-4"]
    assert manifest_problems(second / "checkpoint-3", verify_hashes=True) == []
    # resumed locally without the flag: the mirror is a run setting, inherited from the checkpoint
    assert main(train_args(*args, second, cache_dir, *QUICK, "--auto-resume")) == 0
    resumed = step_losses(second)
    assert resumed == {step: reference[step] for step in (4, 5, 6)}  # bitwise: the same floats
    assert store.steps() == [3, 4, 6] and store.problem("checkpoint-6") is None


def test_a_mirror_that_cannot_be_used_is_refused_before_training(
    s3_env, tiny_model, small_csv, cache_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    code, line = _exit(
        train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--checkpoint-mirror", "s3://no-such-bucket/run"),
        capsys,
    )
    assert code == EXIT_USAGE and line.startswith("error: --checkpoint-mirror s3://no-such-bucket/run: not found")
    assert not (out / "metrics.jsonl").exists() and ckpt.list_checkpoints(out) == []
    url = s3_env.make_bucket("wrong-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-key")
    code, line = _exit(train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--checkpoint-mirror", url), capsys)
    assert code == EXIT_USAGE and "access denied" in line
    assert not (out / "metrics.jsonl").exists() and ckpt.list_checkpoints(out) == []


def test_upload_failures_are_summed_up_and_the_run_ends_with_exit_4(
    tiny_model, small_csv, cache_dir, tmp_path, capsys, monkeypatch, caplog
):
    monkeypatch.setattr(remote.Retry.__init__, "__defaults__", (2, 0.01))
    caplog.set_level(logging.INFO, logger="chef_genius")

    def refuse(self, local, remote_path, entry):
        raise OSError("the store is full")

    monkeypatch.setattr(remote.RemoteStore, "_put_verified", refuse)
    out = tmp_path / "run"
    code, line = _exit(
        train_args(
            tiny_model,
            small_csv,
            out,
            cache_dir,
            *QUICK,
            "--on-save-error",
            "continue",
            "--checkpoint-mirror",
            tmp_path / "mirror",
        ),
        capsys,
    )
    assert code == EXIT_SAVE
    assert "the mirror's copy of checkpoint-6" in line and "2 checkpoint(s) did not reach the mirror" in line
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-3", "checkpoint-6"]  # the local run intact
    assert (out / "config.json").is_file()  # and its final model
    assert caplog.text.count("retrying with backoff") == 2  # once per checkpoint


def _signal_at_step(monkeypatch, step, sig):
    original = Trainer.maybe_log

    def maybe_log(self, force=False):
        original(self, force)
        if self.state.global_step == step and not force:
            signal.raise_signal(sig)

    monkeypatch.setattr(Trainer, "maybe_log", maybe_log)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_sigusr1_saves_exits_75_and_requeues_the_slurm_job_after_the_commit(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, capsys
):
    out, mirror, record = tmp_path / "run", tmp_path / "mirror", tmp_path / "scontrol.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "scontrol"  # records its arguments and what was committed when it ran
    stand_in.write_text(
        f'#!/bin/sh\necho "$@" >> {record}\n'
        f"test -f {out}/checkpoint-2/manifest.json && echo local-committed >> {record}\n"
        f"test -f {mirror}/checkpoint-2/manifest.json && echo mirrored >> {record}\nexit 0\n"
    )
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    _signal_at_step(monkeypatch, 2, signal.SIGUSR1)
    code, line = _exit(
        train_args(
            tiny_model, small_csv, out, cache_dir, *QUICK, "--checkpoint-mirror", mirror, "--requeue-on-preemption"
        ),
        capsys,
    )
    assert code == EXIT_PREEMPTED and line.startswith("stopped: SIGUSR1 received: saved checkpoint-2 ")
    assert "requeued" in line
    assert record.read_text().splitlines() == ["requeue 4242", "local-committed", "mirrored"]


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_without_requeue_flag_sigusr1_stops_and_nothing_is_requeued(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, capsys
):
    record = tmp_path / "scontrol.txt"
    (tmp_path / "bin").mkdir()
    stand_in = tmp_path / "bin" / "scontrol"
    stand_in.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    _signal_at_step(monkeypatch, 2, signal.SIGUSR1)
    out = tmp_path / "run"
    code, line = _exit(train_args(tiny_model, small_csv, out, cache_dir, *QUICK), capsys)
    assert code == EXIT_PREEMPTED and "continue with --resume-from-checkpoint latest" in line
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]
    assert not record.exists()  # opt-in: no --requeue-on-preemption, no scontrol


def test_a_slow_store_never_stalls_training_and_what_it_reads_is_kept_locally(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch
):
    """checkpoint-2's upload hangs until checkpoint-6 is committed: training goes on meanwhile, the local
    --save-total-limit keeps checkpoint-2 while the mirror reads it, checkpoint-4 (still waiting) is
    replaced by checkpoint-6, and the mirror's own retention ends with the newest only."""
    out, mirrors = tmp_path / "run", []
    real_upload, real_init = remote.RemoteStore.upload, Mirror.__init__

    def slow_upload(self, folder, *args, **kwargs):
        if folder.name == "checkpoint-2":
            for _ in range(1200):  # at most 120 s
                if (out / "checkpoint-6" / ckpt.MANIFEST).exists():
                    break
                time.sleep(0.1)
            assert (out / "checkpoint-2").is_dir()  # kept locally while the mirror reads it
        return real_upload(self, folder, *args, **kwargs)

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        mirrors.append(self)

    monkeypatch.setattr(remote.RemoteStore, "upload", slow_upload)
    monkeypatch.setattr(Mirror, "__init__", init)
    assert (
        main(
            train_args(
                tiny_model,
                small_csv,
                out,
                cache_dir,
                *QUICK,
                "--save-steps",
                2,
                "--save-total-limit",
                1,
                "--checkpoint-mirror",
                tmp_path / "mirror",
            )
        )
        == 0
    )
    (mirror,) = mirrors
    assert mirror.mirrored == [2, 6] and mirror.skipped == [4] and not mirror.failures
    assert remote.open_store(str(tmp_path / "mirror")).steps() == [6]
    assert "checkpoint-4" not in [p.name for p in ckpt.list_checkpoints(out)]
