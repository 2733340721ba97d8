"""The checkpoint mirror as a component (``checkpoint/mirror.py``, ``remote.py``, ``fetch.py``): uploads
verified with the manifest last, retention on the mirror, downloads hash-checked through the commit
path; on a second local folder (fast) and on a real S3 server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fsspec")

from chef_genius.checkpoint import layout as ckpt  # noqa: E402
from chef_genius.checkpoint.fetch import fetch_newer  # noqa: E402
from chef_genius.checkpoint.manifest import manifest_problems  # noqa: E402
from chef_genius.checkpoint.mirror import Mirror  # noqa: E402
from chef_genius.checkpoint.remote import RemoteStore, Retry, open_store  # noqa: E402
from chef_genius.errors import UserError  # noqa: E402

QUICK = Retry(attempts=2, first_delay=0.01)


@pytest.fixture
def run(stopped_run, tmp_path) -> Path:
    """A copy of the stopped run's checkpoint-5 and checkpoint-10."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint-5", "checkpoint-10"):
        shutil.copytree(stopped_run / name, out / name)
    return out


def mirrored(store: RemoteStore, *folders: Path, **kwargs) -> Mirror:
    mirror = Mirror(store, retry=QUICK, **kwargs)
    for folder in folders:
        mirror.submit(folder)
        assert mirror.drain(60)
    return mirror


def flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------
# a second local folder as the mirror


def test_upload_copies_every_file_verified_and_the_manifest_last(run, tmp_path, monkeypatch):
    store = open_store(str(tmp_path / "mirror"))
    store.check_access()
    order = []
    put = store._put_verified
    monkeypatch.setattr(
        store, "_put_verified", lambda local, remote, entry: (order.append(local.name), put(local, remote, entry))
    )
    mirror = mirrored(store, run / "checkpoint-10")
    assert mirror.mirrored == [10] and not mirror.failures
    assert order[-1] == ckpt.MANIFEST and len(order) == len(set(order)) > 3
    remote = tmp_path / "mirror" / "checkpoint-10"
    for path in (run / "checkpoint-10").rglob("*"):
        if path.is_file():
            assert (remote / path.relative_to(run / "checkpoint-10")).read_bytes() == path.read_bytes()
    assert manifest_problems(remote, verify_hashes=True) == []
    order.clear()
    mirror.submit(run / "checkpoint-10")  # already there, identical: nothing sent again
    assert mirror.drain(60) and order == []


def test_a_locally_damaged_file_is_never_mirrored(run, tmp_path):
    flip_byte(run / "checkpoint-10" / ckpt.WEIGHTS)  # same size: only its sha256 tells
    store = open_store(str(tmp_path / "mirror"))
    mirror = mirrored(store, run / "checkpoint-10")
    failures = mirror.take_failures()
    assert [f.what for f in failures] == ["checkpoint-10"] and "does not match its manifest" in failures[0].reason
    assert mirror.mirrored == []
    assert "1 checkpoint(s) did not reach the mirror" in mirror.summary(10)
    assert store.problem("checkpoint-10") == "no manifest.json (its upload did not finish)"
    assert mirror.take_failures() == []  # reported once


def test_store_errors_are_retried_with_backoff(run, tmp_path, monkeypatch, caplog):
    store = open_store(str(tmp_path / "mirror"))
    real_open, failures = store.fs.open, []

    def flaky_open(path, mode="rb", **kwargs):
        if "w" in mode and len(failures) < 2:
            failures.append(path)
            raise ConnectionError("connection reset by peer")
        return real_open(path, mode, **kwargs)

    monkeypatch.setattr(store.fs, "open", flaky_open)
    with caplog.at_level(logging.INFO, logger="chef_genius"):
        mirror = Mirror(store, retry=Retry(attempts=3, first_delay=0.01))
        mirror.submit(run / "checkpoint-10")
        assert mirror.drain(60)
    assert mirror.mirrored == [10] and len(failures) == 2
    assert caplog.text.count("retrying with backoff") == 1  # once per checkpoint, not per retry


def test_retention_on_the_mirror_keeps_the_newest_and_the_best(run, tmp_path):
    store = open_store(str(tmp_path / "mirror"))
    (tmp_path / "mirror" / "checkpoint-2").mkdir(parents=True)  # an upload cut short: neither counted nor deleted
    (tmp_path / "mirror" / "checkpoint-2" / ckpt.WEIGHTS).write_bytes(b"partial")
    mirrored(store, run / "checkpoint-5", run / "checkpoint-10", keep_last=1, best_step=lambda: 5)
    assert store.steps() == [2, 5, 10]
    mirrored(store, run / "checkpoint-10", keep_last=1, best_step=lambda: None)
    assert store.steps() == [2, 10]


def test_fetch_takes_the_newest_healthy_remote_checkpoint(run, tmp_path, caplog):
    store = open_store(str(tmp_path / "mirror"))
    mirrored(store, run / "checkpoint-5", run / "checkpoint-10")
    flip_byte(tmp_path / "mirror" / "checkpoint-10" / ckpt.TRAINING_STATE)  # damaged in the store
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with caplog.at_level(logging.INFO, logger="chef_genius"):
        path = fetch_newer(store, fresh, None, QUICK)
    assert path == fresh / "checkpoint-5" and manifest_problems(path, verify_hashes=True) == []
    assert [p.name for p in fresh.iterdir()] == ["checkpoint-5"]  # nothing of checkpoint-10, no staging left
    skipped = [r.message for r in caplog.records if "skipping" in r.message]
    assert len(skipped) == 1 and "checkpoint-10" in skipped[0] and "sha256" in skipped[0]


def test_fetch_skips_an_incomplete_remote_checkpoint_and_local_newer_wins(run, tmp_path, caplog):
    store = open_store(str(tmp_path / "mirror"))
    mirrored(store, run / "checkpoint-5", run / "checkpoint-10")
    os.remove(tmp_path / "mirror" / "checkpoint-10" / ckpt.WEIGHTS)
    fresh = tmp_path / "fresh"
    with caplog.at_level(logging.WARNING, logger="chef_genius"):
        assert fetch_newer(store, fresh, None, QUICK) == fresh / "checkpoint-5"
    assert "checkpoint-10: model.safetensors is missing" in caplog.text
    assert fetch_newer(store, run, 10, QUICK) is None  # the local checkpoint-10 is as new: no download
    assert fetch_newer(store, tmp_path / "fresh", 5, QUICK) is None


def test_a_download_cut_short_leaves_nothing_that_looks_like_a_checkpoint(run, tmp_path):
    store_path = tmp_path / "mirror"
    mirrored(open_store(str(store_path)), run / "checkpoint-10")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    code = (
        "from chef_genius.checkpoint.remote import open_store;"
        "from chef_genius.checkpoint.fetch import fetch_newer;"
        f"fetch_newer(open_store({str(store_path)!r}), {str(fresh)!r}, None)"
    )
    killed = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "CHEF_GENIUS_FAULT_AT": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode != 0 and "files fsynced" in killed.stderr  # killed after the files, before the manifest
    assert ckpt.list_checkpoints(fresh) == [] and ckpt.staging_folders(fresh)
    assert fetch_newer(open_store(str(store_path)), fresh, None, QUICK) == fresh / "checkpoint-10"


# ---------------------------------------------------------------------------------------------
# a real S3 server


def test_s3_mirror_round_trip_and_a_corrupted_object_is_never_chosen(s3_env, run, tmp_path, caplog):
    url = s3_env.make_bucket("roundtrip") + "/runs/tiny"
    store = open_store(url)
    store.check_access()
    mirror = mirrored(store, run / "checkpoint-5", run / "checkpoint-10")
    assert mirror.mirrored == [5, 10] and store.steps() == [5, 10]
    fresh = tmp_path / "fresh"
    assert fetch_newer(open_store(url), fresh, None, QUICK) == fresh / "checkpoint-10"
    for path in (run / "checkpoint-10").rglob("*"):
        if path.is_file() and path.name != ckpt.MANIFEST:
            assert (fresh / "checkpoint-10" / path.name).read_bytes() == path.read_bytes()
    # an object replaced in the bucket by other bytes of the same size
    name = "runs/tiny/checkpoint-10/" + ckpt.TRAINING_STATE
    data = bytearray(store.fs.cat_file(f"roundtrip/{name}"))
    data[-50] ^= 0xFF
    store.fs.pipe_file(f"roundtrip/{name}", bytes(data))
    again = tmp_path / "again"
    with caplog.at_level(logging.WARNING, logger="chef_genius"):
        assert fetch_newer(open_store(url), again, None, QUICK) == again / "checkpoint-5"
    assert "training_state.pt does not match its sha256" in caplog.text
    assert [p.name for p in again.iterdir()] == ["checkpoint-5"]


def test_s3_retention_on_the_mirror(s3_env, run):
    store = open_store(s3_env.make_bucket("retention"))
    mirrored(store, run / "checkpoint-5", run / "checkpoint-10", keep_last=1)
    assert store.steps() == [10]


def test_s3_wrong_credentials_and_a_missing_bucket_are_refused_at_once(s3_env, monkeypatch):
    url = s3_env.make_bucket("access")
    with pytest.raises(UserError, match="no-such-bucket.*not found"):
        open_store("s3://no-such-bucket/run").check_access()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(UserError, match="access denied.*AWS_SECRET_ACCESS_KEY"):
        open_store(url).check_access()


def test_s3_server_killed_mid_upload_then_restarted(s3_env, run, monkeypatch):
    # botocore's own retries, as a user sets them: 2 attempts instead of 5 (whose backoff adds about 7 s to
    # each of the mirror's attempts against the dead server); the mirror's retries are QUICK's, as before
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    url = s3_env.make_bucket("restart")
    store = open_store(url)
    put, sent = store._put_verified, []

    def put_then_kill(local, remote, entry):
        put(local, remote, entry)
        sent.append(local.name)
        if len(sent) == 2:
            s3_env.stop()  # SIGKILL: the server dies between two objects of the checkpoint

    monkeypatch.setattr(store, "_put_verified", put_then_kill)
    try:
        mirror = mirrored(store, run / "checkpoint-10")
        assert [f.what for f in mirror.take_failures()] == ["checkpoint-10"] and mirror.mirrored == []
    finally:
        s3_env.start()
    monkeypatch.setattr(store, "_put_verified", put)
    assert store.problem("checkpoint-10") == "no manifest.json (its upload did not finish)"
    mirror.submit(run / "checkpoint-10")  # the next save's upload, once the store is back
    assert mirror.drain(60) and mirror.mirrored == [10], mirror.failures
    assert store.problem("checkpoint-10") is None
