"""The doctor on a checkpoint mirror (``--checkpoint-mirror``): read-only.

- ``verify_and_fix_checkpoint.py URL/checkpoint-N [--deep]``: the remote checkpoint is downloaded into
  a temporary folder, every file checked against the remote manifest's size and sha256 on its way,
  then verified there like a local one (training state, weights, with ``--deep`` every tensor); the
  temporary copy is removed. Nothing is written to the mirror; ``--fix`` is refused (repairs are local:
  resume with ``--auto-resume --checkpoint-mirror URL``, which fetches the newest healthy one).
- ``fix_all_checkpoints.py URL --dry-run``: one line per remote checkpoint, from its manifest and the
  sizes the store lists (no download): complete, or why not.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint.remote import RemoteError, Retry, open_store
from chef_genius.doctor.problems import Problem
from chef_genius.doctor.verify import Report, verify
from chef_genius.errors import EXIT_FAILURE, EXIT_OK, UserError


def is_url(text: str) -> bool:
    """A mirror URL (``s3://...``, ``file://...``), not a local path."""
    scheme, sep, _ = str(text).partition("://")
    return bool(sep) and scheme.isidentifier()


def verify_remote(url: str, deep: bool = False) -> Report:
    """The report of the remote checkpoint at ``url`` (``.../checkpoint-N``); see the module docstring."""
    base, _, name = url.rstrip("/").rpartition("/")
    if ckpt.step_of(name) is None:
        raise UserError(f"checkpoint {url}: name a checkpoint-N folder of the mirror")
    store = open_store(base)
    store.check_access_read()
    listed = store.objects().get(name)
    if not listed:
        raise UserError(f"checkpoint {url}: no such checkpoint on the mirror")
    problem = store.problem(name, listed)
    with tempfile.TemporaryDirectory(prefix="chef-genius-verify-") as scratch:
        folder = Path(scratch) / name
        folder.mkdir()
        if problem is None:
            try:
                store.download(name, folder, Retry(attempts=3))
                manifest = store.read_manifest(name)  # beside the files, as in a local checkpoint
                (folder / ckpt.MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            except RemoteError as err:
                problem = str(err)
        if problem is not None:
            report = Report(folder, global_step=ckpt.step_of(name))
            report.fail(Problem.MIRROR_INCOMPLETE, f"on the mirror: {problem}")
        else:
            report = verify(folder, deep)
            report.ok("downloaded from the mirror, every file matching the remote manifest's sha256")
    report.path = url  # the report names the remote checkpoint, not the temporary copy
    return report


def list_remote(url: str) -> tuple[str, int]:
    """The table of ``fix_all_checkpoints.py URL --dry-run`` and its exit code."""
    store = open_store(url)
    store.check_access_read()
    listed = store.objects()
    if not listed:
        raise UserError(f"MODEL_DIR {url}: the mirror holds no {ckpt.PREFIX}N folder")
    problems = {name: store.problem(name, listed[name]) for name in sorted(listed, key=ckpt.checkpoint_step)}
    rows = [("step", "on the mirror")]
    rows += [
        (str(ckpt.step_of(name)), "complete" if problem is None else f"incomplete: {problem}")
        for name, problem in problems.items()
    ]
    newest = next((name for name, problem in reversed(problems.items()) if problem is None), None)
    width = max(len(r[0]) for r in rows)
    lines = [f"{step.ljust(width)}  {state}" for step, state in rows]
    lines.append(
        f"dry run: nothing was written; newest complete checkpoint on the mirror: {newest or 'none'} "
        "(sizes and manifests checked; python cli/verify_and_fix_checkpoint.py URL/checkpoint-N also "
        "downloads it and checks every sha256)"
    )
    return "\n".join(lines), EXIT_OK if all(p is None for p in problems.values()) else EXIT_FAILURE
