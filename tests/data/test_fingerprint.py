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


# -- the digest remembered across runs by the file's state (fingerprint.HashMemo) ----------------------
def _new_process(monkeypatch):
    """What a later run sees: nothing remembered in this process."""
    from chef_genius.data import fingerprint

    monkeypatch.setattr(fingerprint, "_known", {})


def _hashed_long_ago(monkeypatch, path, memo_folder):
    """``path`` hashed by a run into a memo, its last write treated as old enough to trust."""
    import time

    from chef_genius.data import fingerprint

    monkeypatch.setattr(fingerprint, "RACY_SECONDS", 0.02)
    time.sleep(0.05)  # the last write is older than the racy window when the hash begins
    memo = fingerprint.HashMemo(memo_folder)
    digest = fingerprint.content_sha256(path, memo)
    memo.save()
    return digest


def test_a_later_run_takes_the_digest_from_the_memo_without_reading_the_file(tmp_path, monkeypatch):
    from chef_genius.data import fingerprint

    path = _file(tmp_path, 3 * MIB)
    digest = _hashed_long_ago(monkeypatch, path, tmp_path)
    _new_process(monkeypatch)

    def no_read(_):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(fingerprint, "file_sha256", no_read)
    assert fingerprint.content_sha256(path, fingerprint.HashMemo(tmp_path)) == digest


def test_an_edit_with_size_and_time_kept_is_read_again_despite_the_memo(tmp_path, monkeypatch):
    """The promise "data checked by content": a rewrite sets the change time, which no tool sets back."""
    from chef_genius.data import fingerprint

    path = _file(tmp_path, 5 * MIB)
    before = _hashed_long_ago(monkeypatch, path, tmp_path)
    stat = _edit_in_the_middle_keeping_size_and_time(path)
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == stat.st_size
    _new_process(monkeypatch)
    after = fingerprint.content_sha256(path, fingerprint.HashMemo(tmp_path))
    assert after != before and after == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_replaced_by_a_copy_with_the_same_size_and_time_is_read_again(tmp_path, monkeypatch):
    """``cp -p other recipes.csv`` / a rename over it: another inode or a newer change time."""
    from chef_genius.data import fingerprint

    path = _file(tmp_path, 2 * MIB)
    before = _hashed_long_ago(monkeypatch, path, tmp_path)
    other = _file(tmp_path, 2 * MIB, "other.csv")
    stat = path.stat()
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, path)
    _new_process(monkeypatch)
    after = fingerprint.content_sha256(path, fingerprint.HashMemo(tmp_path))
    assert after != before and after == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_written_just_before_its_hash_is_not_remembered(tmp_path):
    """git's racily-clean rule: a write in the same tick of a coarse clock could follow the hash unseen."""
    from chef_genius.data import fingerprint

    path = _file(tmp_path, 1000)
    memo = fingerprint.HashMemo(tmp_path)
    fingerprint.content_sha256(path, memo)
    memo.save()
    assert fingerprint.HashMemo(tmp_path).recall(path) is None


def test_verify_hashes_reads_every_byte_whatever_the_memo_says(tmp_path, monkeypatch):
    from chef_genius.data import fingerprint

    path = _file(tmp_path, MIB)
    digest = _hashed_long_ago(monkeypatch, path, tmp_path)
    assert fingerprint.HashMemo(tmp_path).recall(path) == digest
    assert fingerprint.HashMemo(tmp_path, trusted=False).recall(path) is None


def test_a_damaged_memo_is_ignored(tmp_path):
    from chef_genius.data import fingerprint

    (tmp_path / fingerprint.MEMO_FILE).write_text('{"half', encoding="utf-8")
    path = _file(tmp_path, 1000)
    assert fingerprint.HashMemo(tmp_path).recall(path) is None
    assert (
        fingerprint.content_sha256(path, fingerprint.HashMemo(tmp_path))
        == hashlib.sha256(path.read_bytes()).hexdigest()
    )
