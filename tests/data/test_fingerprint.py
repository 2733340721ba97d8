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
    big, middling, small = (
        _file(tmp_path, 3 * MIB + 123, "big.csv"),
        _file(tmp_path, MIB + MIB // 2, "mid.csv"),
        _file(tmp_path, 5000, "small.csv"),
    )
    data = big.read_bytes()
    assert data_identity(big) == {
        "name": "big.csv",
        "size": len(data),
        "sha256_head_tail": hashlib.sha256(data[:MIB] + data[-MIB:]).hexdigest(),
    }
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


def _edit_in_the_middle_keeping_size_and_time(path):
    """Flip one byte at the middle of ``path`` (the same length) and set its modification time back."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return stat


def test_content_identity_sees_an_edit_anywhere_with_size_and_time_kept(tmp_path):
    from chef_genius.data.fingerprint import content_identity, content_sha256

    path = _file(tmp_path, 5 * MIB)
    before, legacy = content_identity(path), data_identity(path)
    assert before == {"name": "recipes.csv", "size": 5 * MIB, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    stat = _edit_in_the_middle_keeping_size_and_time(path)
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == stat.st_size
    assert data_identity(path) == legacy  # what checkpoints saved before could not tell
    assert content_identity(path) != before  # remembered per file state: the edit is read again
    assert content_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_hash_beside_a_reader_is_the_content_sha256(tmp_path):
    from chef_genius.data.fingerprint import hashing_beside

    path = _file(tmp_path, 3 * MIB + 7)
    with hashing_beside(path) as digest:
        path.read_bytes()  # the reader's own pass
    assert digest() == hashlib.sha256(path.read_bytes()).hexdigest()
