"""A checkpoint mirror's store: object storage (``s3://bucket/prefix``, ``gs://...``) or a second local
or network folder, reached through fsspec (imported only when a mirror is used).

Layout, the same as the run folder's: ``URL/checkpoint-N/<the files of the local checkpoint>``.

What makes a remote checkpoint complete, since a store has no rename:
- every file is uploaded from the committed local checkpoint while its bytes are hashed; a local file
  whose sha256 differs from its manifest's is never uploaded (the local copy is damaged);
- every uploaded object is then read back from the store and hashed again: the store holds the bytes
  the manifest names (this works on every store; a check against a store's own checksum would not);
- ``manifest.json`` is uploaded last, after every file is verified, and removed first when a remote
  checkpoint is replaced or deleted. A remote folder without a manifest is never resumed from.

A download (``download``) hashes each file while it is written and refuses one whose size or sha256
differs from the remote manifest; the caller writes into a staging folder and commits it like a save.

Errors of the store are ``RemoteError`` (one readable line); ``check_access`` turns wrong credentials,
a missing bucket or an unreachable store into a ``UserError`` before training starts (exit 2).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import posixpath
import time
from pathlib import Path
from collections.abc import Callable

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import trust
from chef_genius.checkpoint.manifest import read_manifest
from chef_genius.errors import UserError, printable

log = logging.getLogger(__name__)

_CHUNK = 8 << 20
_MANIFEST_BYTES = 16 << 20  # a remote manifest larger than this is not read
REQUIREMENTS = "requirements-mirror.txt"


class RemoteError(Exception):
    """A store operation that failed, or a remote checkpoint that does not verify; one line."""


class Retry:
    """Runs an action again on failure: ``attempts`` tries, waiting ``first_delay`` seconds, then twice as
    long each time. ``on_retry(error)`` is told of each failure that is retried."""

    def __init__(self, attempts: int = 5, first_delay: float = 1.0):
        self.attempts = attempts
        self.first_delay = first_delay

    def __call__(self, action: Callable[[], object], on_retry: Callable[[Exception], None] = lambda err: None):
        delay = self.first_delay
        for attempt in range(self.attempts):
            try:
                return action()
            except RemoteError:
                raise  # a verified mismatch or a refusal: trying again would not change it
            except Exception as err:  # OSError, botocore's and aiohttp's errors: the store or the network
                if attempt == self.attempts - 1:
                    raise RemoteError(describe(err)) from err
                on_retry(err)
                time.sleep(delay)
                delay *= 2


def describe(err: BaseException) -> str:
    """One line on a store's error (botocore's messages are long and repeat themselves)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {printable(text, 200)}"


def open_store(url: str) -> RemoteStore:
    """The store at ``url``; ``UserError`` when fsspec or the client of its protocol is not installed."""
    try:
        import fsspec
    except ImportError:
        raise UserError(f"--checkpoint-mirror needs fsspec: pip install -r {REQUIREMENTS}") from None
    try:
        fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True)  # credentials are read anew
    except ImportError as err:  # s3fs / gcsfs missing: fsspec's message names the package
        raise UserError(f"--checkpoint-mirror {url}: {err}; pip install -r {REQUIREMENTS}") from None
    except (ValueError, TypeError) as err:
        raise UserError(f"--checkpoint-mirror {url}: not a usable URL ({err})") from None
    for client in ("botocore", "aiobotocore", "s3fs"):  # their INFO lines ("Found credentials...") are noise here
        logging.getLogger(client).setLevel(logging.WARNING)
    return RemoteStore(url, fs, root)


class RemoteStore:
    """The checkpoints under one URL; every method takes the checkpoint's folder name (``checkpoint-N``)."""

    def __init__(self, url: str, fs, root: str):
        self.url = url.rstrip("/")
        self.fs = fs
        self.root = root.rstrip("/")

    @property
    def is_local(self) -> bool:
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else tuple(self.fs.protocol)
        return "file" in protocols or "local" in protocols

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def where(self, name: str = "") -> str:
        """``name`` as the user would write it (for log lines)."""
        return f"{self.url}/{name}" if name else self.url

    # -- access -----------------------------------------------------------------------------------

    def check_access(self) -> None:
        """Write, read back and delete a small object under the URL, so that wrong credentials, a missing
        bucket or an unreachable endpoint end the run now (``UserError``, exit 2), not at its first save."""
        probe = self._path(f".chef-genius-probe-{ckpt.process_tag()}")
        text = b"chef-genius mirror probe\n"

        def probe_round_trip() -> None:
            if self.is_local:  # a folder is made; a bucket never is (object stores have no folders)
                self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(probe, text)
            self.fs.invalidate_cache(self.root)
            if self.fs.cat_file(probe) != text:
                raise UserError(f"--checkpoint-mirror {self.url}: the store returned other bytes than those written")
            self.fs.rm_file(probe)

        self._refuse_errors(probe_round_trip, "--checkpoint-mirror")

    def check_access_read(self) -> None:
        """``check_access`` for a reader (the doctor): one listing, nothing written."""

        def listing() -> None:
            if not self.fs.exists(self.root):
                raise FileNotFoundError(self.url)

        self._refuse_errors(listing, "mirror")

    def _refuse_errors(self, action: Callable[[], None], what: str) -> None:
        try:
            action()
        except UserError:
            raise
        except FileNotFoundError as err:
            raise UserError(
                f"{what} {self.url}: not found ({describe(err)}); create the bucket or folder first, or fix the URL"
            ) from None
        except PermissionError as err:
            fix = (
                "check the folder's permissions"
                if self.is_local
                else "check the store's credentials (for S3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
            )
            raise UserError(f"{what} {self.url}: access denied ({describe(err)}); {fix}") from None
        except Exception as err:
            raise UserError(
                f"{what} {self.url}: the store cannot be used ({describe(err)}); for an "
                "S3-compatible store set AWS_ENDPOINT_URL"
            ) from None

    # -- listing ----------------------------------------------------------------------------------

    def objects(self) -> dict[str, dict[str, int]]:
        """{checkpoint-N: {file name inside it: size}} for every object under the URL (one listing)."""
        self.fs.invalidate_cache(self.root)
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        folders: dict[str, dict[str, int]] = {}
        prefix = self.root + "/"
        for path, info in found.items():
            path = path.lstrip("/") if not self.root.startswith("/") else path
            if not path.startswith(prefix) or info.get("type") == "directory":
                continue
            name, _, inner = path[len(prefix) :].partition("/")
            if ckpt.step_of(name) is not None and inner:
                folders.setdefault(name, {})[inner] = int(info.get("size") or 0)
        return folders

    def steps(self) -> list[int]:
        """Steps of the remote checkpoints (complete or not), oldest first."""
        return sorted(ckpt.checkpoint_step(name) for name in self.objects())

    def read_manifest(self, name: str) -> dict | None:
        """The remote manifest of ``name``; None when it is missing, too large or not a manifest."""
        path = self._path(name, ckpt.MANIFEST)
        try:
            if self.fs.size(path) > _MANIFEST_BYTES:
                return None
            manifest = json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        except ValueError:
            return None
        return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None

    def problem(self, name: str, listed: dict[str, int] | None = None) -> str | None:
        """Why the remote ``name`` is not a complete checkpoint, from its manifest and the sizes the store
        lists (no download); None when it looks complete. The hashes are checked while downloading."""
        if listed is None:
            listed = self.objects().get(name, {})
        if ckpt.MANIFEST not in listed:
            return "no manifest.json (its upload did not finish)"
        manifest = self.read_manifest(name)
        if manifest is None:
            return "manifest.json is unreadable"
        if not manifest.get("complete") or manifest.get("global_step") != ckpt.step_of(name):
            return "manifest.json does not mark it complete at its step"
        for file, entry in manifest["files"].items():
            if not isinstance(entry, dict) or not _safe_name(file):
                return f"manifest.json names {printable(file)}, not a file of the checkpoint"
            if file not in listed:
                return f"{printable(file)} is missing"
            if listed[file] != entry.get("size"):
                said = printable(entry.get("size"), 20)
                return f"{printable(file)} has {listed[file]} bytes, the manifest says {said}"
        return None

    # -- writing ----------------------------------------------------------------------------------

    def upload(
        self,
        folder: Path,
        retry: Retry,
        on_retry: Callable[[Exception], None],
        cancelled: Callable[[], bool] = lambda: False,
    ) -> int:
        """Copy the committed local checkpoint ``folder`` to ``URL/<its name>``: each file hashed on its way
        and read back from the store and hashed, the manifest last. Returns the bytes uploaded (0 when the
        store already held it complete and identical)."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        if manifest is None:
            raise RemoteError(f"{folder.name} has no readable manifest: it is not a committed checkpoint")
        name = folder.name
        remote_manifest = retry(lambda: self.read_manifest(name), on_retry)
        if (
            remote_manifest is not None
            and remote_manifest.get("files") == manifest["files"]
            and retry(lambda: self.problem(name), on_retry) is None
        ):
            return 0
        if remote_manifest is not None or retry(lambda: self.fs.exists(self._path(name, ckpt.MANIFEST)), on_retry):
            retry(lambda: self.fs.rm_file(self._path(name, ckpt.MANIFEST)), on_retry)  # no longer complete
        sent = 0
        for file, entry in sorted(manifest["files"].items()):
            if cancelled():
                raise RemoteError("given up")
            retry(functools.partial(self._put_verified, folder / file, self._path(name, file), entry), on_retry)
            sent += int(entry["size"])
        manifest_bytes = (folder / ckpt.MANIFEST).read_bytes()
        manifest_entry = {"size": len(manifest_bytes), "sha256": hashlib.sha256(manifest_bytes).hexdigest()}
        retry(
            lambda: self._put_verified(folder / ckpt.MANIFEST, self._path(name, ckpt.MANIFEST), manifest_entry),
            on_retry,
        )
        return sent + len(manifest_bytes)

    def _put_verified(self, local: Path, remote: str, entry: dict) -> None:
        digest, size = hashlib.sha256(), 0
        if self.is_local:
            self.fs.makedirs(posixpath.dirname(remote), exist_ok=True)
        with open(local, "rb") as source, self.fs.open(remote, "wb") as target:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                target.write(chunk)
                size += len(chunk)
        if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
            raise RemoteError(
                f"the local {local.parent.name}/{local.name} does not match its manifest "
                "(damaged on disk?): not mirrored"
            )
        self.fs.invalidate_cache(posixpath.dirname(remote))
        read_size, read_digest = self._hash_remote(remote)
        if read_size != entry["size"] or read_digest != entry["sha256"]:
            raise OSError(f"{posixpath.basename(remote)} read back from the store differs from what was sent")

    def _hash_remote(self, remote: str, into: Path | None = None) -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        with self.fs.open(remote, "rb") as source, open(into, "wb") if into else _Discard() as target:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                target.write(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    def delete(self, name: str) -> None:
        """Remove the remote ``name``: its manifest first, so that no half-deleted folder looks complete."""
        manifest = self._path(name, ckpt.MANIFEST)
        if self.fs.exists(manifest):
            self.fs.rm_file(manifest)
        self.fs.rm(self._path(name), recursive=True)
        self.fs.invalidate_cache(self.root)

    # -- reading ----------------------------------------------------------------------------------

    def download(self, name: str, staging: Path, retry: Retry | None = None) -> dict[str, str]:
        """Copy the remote ``name`` into the empty folder ``staging``, each file hashed as it is written and
        compared with the remote manifest (size and sha256); returns {file: sha256}. ``RemoteError`` names
        the first file that differs; the caller removes the staging folder."""
        retry = retry or Retry(attempts=1)
        manifest = retry(lambda: self.read_manifest(name))
        if manifest is None or not manifest.get("complete"):
            raise RemoteError("no complete manifest.json")
        digests = {}
        for file, entry in sorted(manifest["files"].items()):
            if not isinstance(entry, dict) or not _safe_name(file) or not trust.confined(staging, file):
                raise RemoteError(f"manifest.json names {printable(file)}, not a file of the checkpoint")
            target = staging / file
            target.parent.mkdir(parents=True, exist_ok=True)
            remote = self._path(name, file)
            size, digest = retry(functools.partial(self._hash_remote, remote, into=target))
            if size != entry.get("size") or digest != entry.get("sha256"):
                raise RemoteError(f"{printable(file)} does not match its sha256 in the remote manifest")
            digests[file] = digest
        return digests


def _safe_name(name) -> bool:
    """A relative file name inside a checkpoint: no absolute path, no ``..``, not the manifest itself."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or name == ckpt.MANIFEST:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


class _Discard:
    def write(self, data) -> None:
        pass

    def __enter__(self) -> _Discard:
        return self

    def __exit__(self, *exc) -> None:
        pass
