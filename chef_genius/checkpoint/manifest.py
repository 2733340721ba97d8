"""The manifest that seals a checkpoint, and the checks that decide whether a folder is a checkpoint
a run can use (``find_latest``, ``usability_problem``).

``manifest.json`` is written last: every other file of the checkpoint with its size and sha256, and
``"complete": true``. A folder without a verifying manifest is never resumed from.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chef_genius.checkpoint import trust
from chef_genius.checkpoint.health import health_problem
from chef_genius.checkpoint.files import sha256_file
from chef_genius.checkpoint.layout import (
    ADAPTER_CONFIG,
    ADAPTER_REQUIRED_FILES,
    ADAPTER_WEIGHTS,
    BASE_RECORD,
    FORMAT_NAME,
    FORMAT_VERSION,
    GENERATION_CONFIG,
    MANIFEST,
    MODEL_CONFIG,
    REQUIRED_FILES,
    TRAINING_STATE,
    WEIGHT_ENTRY_FILES,
    WEIGHTS,
    WEIGHTS_BIN,
    WEIGHTS_INDEX,
    CheckpointError,
    checkpoint_step,
    linked_checkpoints,
    list_checkpoints,
    step_of,
    weights_layout,
)
from chef_genius.checkpoint.records import read_base
from chef_genius.checkpoint.training_state import load_training_state, saved_step, state_contract_problem
from chef_genius.errors import printable


def build_manifest(folder: str | Path, global_step: int, known_sha256: dict[str, str] | None = None) -> dict:
    """The manifest of ``folder``; ``known_sha256`` (name -> digest) spares hashing files again."""
    folder = Path(folder)
    known_sha256 = known_sha256 or {}
    odd = trust.odd_entries(folder)
    if odd:  # never hash or bless what a link points at
        raise CheckpointError(f"{folder}: {odd[0]}; no manifest written")
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name == MANIFEST or name.startswith("backup"):
            continue
        digest = known_sha256.get(name) or sha256_file(path)
        files[name] = {"size": path.stat().st_size, "sha256": digest}
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "global_step": global_step,
        "complete": True,
        "created_unix": time.time(),
        "files": files,
    }


def read_manifest(folder: str | Path) -> dict | None:
    path = Path(folder) / MANIFEST
    try:
        manifest = trust.read_json(path)
    except (OSError, trust.Untrusted):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


@dataclass(frozen=True)
class ManifestProblem:
    """One reason a folder's manifest does not verify. ``kind`` says which: ``changed`` means a file the
    manifest lists (``name``) has another size or sha256 than it says (damage, never a stale manifest);
    every other kind means the manifest itself is missing, incomplete or does not match the folder."""

    kind: Literal["unreadable", "incomplete", "unlisted", "outside", "odd_entry", "bad_entry", "missing", "changed"]
    message: str
    name: str | None = None  # the file concerned, as the manifest names it

    def __str__(self) -> str:
        return self.message


def manifest_findings(folder: str | Path, verify_hashes: bool = False) -> list[ManifestProblem]:
    """Why ``folder`` is not a complete checkpoint (empty when it verifies), each problem typed."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return [
            ManifestProblem(
                "unreadable", "no readable manifest.json (the save did not finish, or the files were copied by hand)"
            )
        ]
    if not manifest.get("complete"):
        return [ManifestProblem("incomplete", "manifest.json does not mark the checkpoint complete")]
    problems = []
    required = ADAPTER_REQUIRED_FILES if ADAPTER_WEIGHTS in manifest["files"] else REQUIRED_FILES  # LoRA: no model
    for name in required:
        names = WEIGHT_ENTRY_FILES if name == WEIGHTS else (name,)  # the weights: in any of their layouts
        if not any(n in manifest["files"] for n in names):
            problems.append(ManifestProblem("unlisted", f"manifest lists no {name}", name))
    outside = [name for name in manifest["files"] if not trust.confined(folder, name)]
    if outside:  # never opened, never stat'ed: the manifest itself is invalid
        return [
            ManifestProblem(
                "outside", f"manifest.json names {printable(outside[0])}, a path outside the checkpoint", outside[0]
            )
        ]
    odd = trust.odd_entries(folder, tuple(manifest["files"]))
    if odd:
        return [ManifestProblem("odd_entry", odd[0])]
    for name, entry in manifest["files"].items():
        path, shown = folder / name, printable(name, 120)  # a name from a stranger: no escapes printed
        if not isinstance(entry, dict):
            problems.append(ManifestProblem("bad_entry", f"manifest entry of {shown} is not an object", name))
        elif not path.is_file():
            problems.append(ManifestProblem("missing", f"{shown} is missing", name))
        elif path.stat().st_size != entry.get("size"):
            problems.append(
                ManifestProblem(
                    "changed",
                    f"{shown} has {path.stat().st_size} bytes, the manifest says {printable(entry.get('size'), 20)}",
                    name,
                )
            )
        elif verify_hashes and sha256_file(path) != entry.get("sha256"):
            problems.append(ManifestProblem("changed", f"{shown} does not match its sha256 in the manifest", name))
    return problems


def manifest_problems(folder: str | Path, verify_hashes: bool = False) -> list[str]:
    """Why ``folder`` is not a complete checkpoint (empty when it verifies), as sentences."""
    return [problem.message for problem in manifest_findings(folder, verify_hashes)]


# ---------------------------------------------------------------------------------------------
# is this folder a checkpoint a run can use?


def find_latest(
    output_dir: str | Path, verify_hashes: bool = False, need_state: bool = True
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies and whose state and model load, with its step equal to its
    folder's name and its numbers finite; and the newer ones skipped (symbolic links too), each with the reason.
    ``need_state=False`` (generation): the training state is not looked at."""
    candidates: list[tuple[Path, str | None]] = [
        (p, "a symbolic link: never followed") for p in linked_checkpoints(output_dir)
    ]
    candidates += [(p, None) for p in list_checkpoints(output_dir)]
    skipped: list[tuple[Path, str]] = []
    for path, known in sorted(candidates, key=lambda c: checkpoint_step(c[0]), reverse=True):
        reason = known or usability_problem(path, verify_hashes, need_state)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


def newest_healthy(output_dir: str | Path, before_step: int | None = None) -> Path | None:
    """The newest checkpoint a resume would accept (its numbers finite, see ``health.py``), only among
    those before step ``before_step`` when given (a rollback's target)."""
    for path in reversed(list_checkpoints(output_dir)):
        if (before_step is None or checkpoint_step(path) < before_step) and usability_problem(path) is None:
            return path
    return None


def usability_problem(folder: str | Path, verify_hashes: bool = False, need_state: bool = True) -> str | None:
    """Why a resume from ``folder`` would fail (None when it would not): the manifest, links or odd
    files, the training state under ``weights_only``, its step and its numbers (``health.py``: the
    record, or the tensors read when there is none), the weights' header, the JSON files."""
    folder = Path(folder)
    problems = manifest_problems(folder, verify_hashes)
    if problems:
        return problems[0]
    state = None
    if need_state:
        problem, state = _state_problem(folder)
        if problem:
            return problem
    problem = _model_problem(folder)
    if problem or state is None:
        return problem
    try:  # last: a checkpoint without a health record has its numbers read
        return health_problem(folder, state)
    except Exception as err:  # safetensors' own errors, a truncated tensor: its numbers cannot be judged
        return f"its numbers could not be read ({type(err).__name__})"


def _state_problem(folder: Path) -> tuple[str | None, dict | None]:
    """(why the training state is unusable, or None; the state, loaded with mmap)."""
    try:
        state = load_training_state(folder, mmap=True)  # the optimizer's moments are not read here
    except CheckpointError as err:
        return str(err), None
    contract = state_contract_problem(state)
    if contract:
        return f"{TRAINING_STATE} {contract}", state
    if step_of(folder) is not None and saved_step(state) != step_of(folder):
        return (
            f"{TRAINING_STATE} is at step {printable(saved_step(state), 20)}, the folder is named {folder.name}"
        ), state
    return None, state


def _model_problem(folder: Path) -> str | None:
    """Why the model files of ``folder`` would not load: a full model's weights and JSON files, or a LoRA
    checkpoint's adapter, its config, the base record and the tokenizer's JSON files."""
    check = _adapter_files_problem if os.path.lexists(folder / ADAPTER_WEIGHTS) else _model_files_problem
    try:
        return check(folder)
    except (trust.Untrusted, ValueError) as err:
        return str(err)
    except OSError as err:
        return f"cannot read its files ({err.strerror})"


_TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _model_files_problem(folder: Path) -> str | None:
    layout, files = weights_layout(folder)
    if layout is None:
        return f"no model weights ({WEIGHTS}, sharded weights with {WEIGHTS_INDEX}, or {WEIGHTS_BIN})"
    for path in files:  # every shard: a regular file inside the folder, its header bounded and valid
        if not os.path.lexists(path):
            return f"{path.name} is missing (a shard named by {WEIGHTS_INDEX})"
        if layout == "bin":
            if not trust.regular_file(path):
                raise trust.Untrusted(f"{path.name} is not a regular file")
        else:
            trust.read_safetensors_header(path)
    return _json_problem(folder, required=(MODEL_CONFIG,), optional=(GENERATION_CONFIG, *_TOKENIZER_JSON))


def _adapter_files_problem(folder: Path) -> str | None:
    trust.read_safetensors_header(folder / ADAPTER_WEIGHTS)
    problem = _json_problem(folder, required=(ADAPTER_CONFIG,))
    if problem is None and read_base(folder) is None:
        problem = f"{BASE_RECORD} is missing or malformed: the base model the adapter belongs to is unknown"
    return problem or _json_problem(folder, optional=_TOKENIZER_JSON)


def _json_problem(folder: Path, required: tuple = (), optional: tuple = ()) -> str | None:
    """The first of ``required`` (and of ``optional`` where present) that is not a JSON object."""
    for name in (*required, *optional):
        present = name in required or os.path.lexists(folder / name)
        if present and not isinstance(trust.read_json(folder / name), dict):
            return f"{name} does not hold a JSON object"
    return None
