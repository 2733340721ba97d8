"""The interface every importer of a foreign checkpoint format implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from chef_genius.doctor.repairs import Repair

if TYPE_CHECKING:  # annotations only: verify and the state builder import the importers
    from chef_genius.doctor.state_builder import Overrides
    from chef_genius.doctor.report import Report


class Importer(ABC):
    """One foreign format: how to recognise its folder (``detect``), what verify says about it
    (``describe``, ``check_files``) and how ``--fix`` turns it into this project's
    ``training_state.pt`` (``convert``)."""

    kind: ClassVar[str]  # the report's "kind" (foreign.LEGACY, foreign.HF, ...)
    converted: ClassVar[Repair]  # the repair code of a conversion (Repair.STATE_CONVERTED_HF)
    files: ClassVar[tuple[str, ...]] = ()  # its files verify requires to be regular files

    @abstractmethod
    def detect(self, folder: Path, state_status: str) -> bool:
        """``folder`` is in this format (``state_status``: of ``foreign.read_state``; never "ours")."""

    def describe(self, report: Report, folder: Path, state_status: str, state: dict | None) -> bool:
        """Report what this format's training state is, what --fix builds from it and what it cannot
        know; True when that replaces verify's checks of a training state (there is none of ours)."""
        return False

    def check_files(self, report: Report, folder: Path) -> None:  # noqa: B027 (optional hook: none by default)
        """Report the format's own files that do not load (after the training-state checks)."""

    def converts(self, state_status: str | None) -> bool:
        """--fix converts this folder's state (rather than rebuilding one from the run's settings)."""
        return True

    @abstractmethod
    def convert(self, folder: Path, report: Report, model, overrides: Overrides) -> tuple[dict, str]:
        """(this project's training-state values, the repair's sentence); raises
        ``ckpt.CheckpointError`` with what to pass when the folder does not tell enough."""

    def recorded_settings(self, folder: Path) -> tuple[dict, str] | None:
        """(run settings, where they came from) that the folder's own files record, or None."""
        return None
