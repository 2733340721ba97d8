"""The doctor on a checkpoint mirror: ``verify_and_fix_checkpoint.py URL/checkpoint-N`` verifies a remote
checkpoint read-only, ``fix_all_checkpoints.py URL --dry-run`` lists the mirror's checkpoints and their health."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fsspec")

from chef_genius.checkpoint import layout as ckpt  # noqa: E402
from chef_genius.checkpoint.mirror import Mirror  # noqa: E402
from chef_genius.checkpoint.remote import Retry, open_store  # noqa: E402
from chef_genius.doctor.cli import fix_all_main, verify_main  # noqa: E402
from chef_genius.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, run_cli  # noqa: E402


def _run(main, argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def _mirror(stopped_run, url: str) -> None:
    mirror = Mirror(open_store(url), retry=Retry(attempts=2, first_delay=0.01))
    for name in ("checkpoint-5", "checkpoint-10"):
        mirror.submit(stopped_run / name)
        assert mirror.drain(60)
    assert mirror.mirrored == [5, 10]


def _snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_verify_a_mirrored_checkpoint_read_only(stopped_run, tmp_path, capsys):
    url = f"file://{tmp_path / 'mirror'}"
    _mirror(stopped_run, url)
    before = _snapshot(tmp_path / "mirror")
    code, out, _ = _run(verify_main, [f"{url}/checkpoint-10", "--deep"], capsys)
    assert code == EXIT_OK and out.startswith(f"{url}/checkpoint-10 ")
    assert "every file matching the remote manifest's sha256" in out
    assert _snapshot(tmp_path / "mirror") == before  # nothing written to the mirror

    code, _, err = _run(verify_main, [f"{url}/checkpoint-10", "--fix"], capsys)
    assert code == EXIT_USAGE and "only verified" in err


def test_a_damaged_mirrored_checkpoint_fails_verification_and_the_listing(stopped_run, tmp_path, capsys):
    url = f"file://{tmp_path / 'mirror'}"
    _mirror(stopped_run, url)
    state = tmp_path / "mirror" / "checkpoint-10" / ckpt.TRAINING_STATE
    data = bytearray(state.read_bytes())
    data[-40] ^= 0xFF  # same size: only the sha256 tells
    state.write_bytes(bytes(data))
    code, out, _ = _run(verify_main, [f"{url}/checkpoint-10"], capsys)
    assert code == EXIT_FAILURE and "training_state.pt does not match its sha256" in out

    os.remove(tmp_path / "mirror" / "checkpoint-10" / ckpt.MANIFEST)
    shutil.copytree(tmp_path / "mirror" / "checkpoint-5", tmp_path / "mirror" / "checkpoint-7")  # wrong step
    code, out, _ = _run(fix_all_main, [url, "--dry-run"], capsys)
    lines = out.splitlines()
    assert code == EXIT_FAILURE
    assert lines[1].split() == ["5", "complete"]
    assert lines[2].split(None, 1) == ["7", "incomplete: manifest.json does not mark it complete at its step"]
    assert lines[3].split(None, 1) == ["10", "incomplete: no manifest.json (its upload did not finish)"]
    assert "newest complete checkpoint on the mirror: checkpoint-5" in lines[4]
    code, _, err = _run(fix_all_main, [url], capsys)
    assert code == EXIT_USAGE and "add --dry-run" in err


def test_the_doctor_on_an_s3_mirror(stopped_run, s3_env, capsys):
    url = s3_env.make_bucket("doctor") + "/run"
    _mirror(stopped_run, url)
    code, out, _ = _run(verify_main, [f"{url}/checkpoint-5", "--deep"], capsys)
    assert code == EXIT_OK and out.startswith(f"{url}/checkpoint-5 ")
    code, out, _ = _run(fix_all_main, [url, "--dry-run"], capsys)
    assert code == EXIT_OK and "newest complete checkpoint on the mirror: checkpoint-10" in out
    code, _, err = _run(verify_main, ["s3://no-such-bucket/run/checkpoint-5"], capsys)
    assert code == EXIT_USAGE and "not found" in err
