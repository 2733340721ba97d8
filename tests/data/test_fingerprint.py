"""The data file's fingerprints: what checkpoints saved must still compare equal for an unchanged file."""

from __future__ import annotations

import hashlib
import os

from chef_genius.data.fingerprint import data_identity, file_fingerprint

MIB = 1 << 20


def _file(tmp_path, size: int, name: str = "recipes.csv"):
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def test_identity_is_what_checkpoints_saved(tmp_path):
    """Checkpoints store name, size and sha256 of the first MiB plus, over 2 MiB, the last MiB; a
    resume compares with ``==``, so these exact values are the contract with every saved checkpoint."""
    big, middling, small = _file(tmp_path, 3 * MIB + 123, "big.csv"), _file(tmp_path, MIB + MIB // 2, "mid.csv"), \
        _file(tmp_path, 5000, "small.csv")
    data = big.read_bytes()
    assert data_identity(big) == {"name": "big.csv", "size": len(data),
                                  "sha256_head_tail": hashlib.sha256(data[:MIB] + data[-MIB:]).hexdigest()}
    assert data_identity(middling)["sha256_head_tail"] == hashlib.sha256(middling.read_bytes()[:MIB]).hexdigest()
    assert data_identity(small)["sha256_head_tail"] == hashlib.sha256(small.read_bytes()).hexdigest()
    assert data_identity(None) is None


def test_identity_survives_a_move_and_sees_an_edit_at_the_ends(tmp_path):
    path = _file(tmp_path, 3 * MIB)
    before = data_identity(path)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    os.replace(path, moved / path.name)
    assert data_identity(moved / path.name) == before
    data = bytearray((moved / path.name).read_bytes())
    data[-1] ^= 1
    (moved / path.name).write_bytes(bytes(data))
    assert data_identity(moved / path.name) != before


def test_cache_fingerprint_reads_a_small_file_whole_and_samples_a_large_one(tmp_path):
    small = _file(tmp_path, 2 * MIB, "small.csv")
    assert file_fingerprint(small)["sampled_sha256"] == hashlib.sha256(small.read_bytes()).hexdigest()[:24]
    large = _file(tmp_path, 8 * MIB, "large.csv")
    first = file_fingerprint(large)
    data = bytearray(large.read_bytes())
    data[MIB + (6 * MIB) * 3 // 17] ^= 1  # inside the third sampled block: the edit is seen
    stat = large.stat()
    large.write_bytes(bytes(data))
    os.utime(large, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and time
    second = file_fingerprint(large)
    assert (second["size"], second["mtime_ns"]) == (first["size"], first["mtime_ns"])
    assert second["sampled_sha256"] != first["sampled_sha256"]
    assert second["path"] == str(large.resolve())
