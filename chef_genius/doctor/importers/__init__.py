"""Checkpoints this project did not write, one importer per format behind one interface (``base.Importer``):

- ``legacy``: the replaced system's folders;
- ``hf``: Hugging Face Trainer's ``checkpoint-N`` folders;
- ``accelerate``: ``Accelerator.save_state`` folders.

verify asks ``detect_kind`` what a folder is and lets its importer describe it; repair lets it convert.
What the formats share (reading a state without a general unpickle, the numpy allowlist, RNG
conversion) is in ``doctor/foreign.py``.
"""

from __future__ import annotations

from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.doctor import foreign
from chef_genius.doctor.importers.accelerate import AccelerateImporter
from chef_genius.doctor.importers.base import Importer
from chef_genius.doctor.importers.hf import HFTrainerImporter
from chef_genius.doctor.importers.legacy import LegacyImporter

IMPORTERS: tuple[Importer, ...] = (LegacyImporter(), HFTrainerImporter(), AccelerateImporter())  # detection order
FILES = tuple(name for importer in IMPORTERS for name in importer.files)


def importer_for(kind: str) -> Importer | None:
    return next((importer for importer in IMPORTERS if importer.kind == kind), None)


def detect_kind(folder: Path, state_status: str) -> str:
    """foreign.CHEF, one importer's kind, or foreign.UNKNOWN."""
    if state_status == "ours":
        return foreign.CHEF
    for importer in IMPORTERS:
        if importer.detect(folder, state_status):
            return importer.kind
    manifest = ckmanifest.read_manifest(folder)
    if manifest is not None and manifest.get("format") == ckpt.FORMAT_NAME:
        return foreign.CHEF
    if LegacyImporter.looks_like(folder):
        return foreign.LEGACY  # the replaced system wrote no manifest
    return foreign.UNKNOWN
