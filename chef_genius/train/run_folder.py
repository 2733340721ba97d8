"""The trainer's run folder and its mirror: one run per folder (the lock), a mirror's checkpoints
fetched before a resume and the mirror checked before training, the resolved settings written for the
next session; what rank 0 alone does is decided for every rank (``_on_main``)."""

from __future__ import annotations

from chef_genius.checkpoint import disk
from chef_genius.checkpoint import fetch
from chef_genius.checkpoint import remote
from chef_genius.checkpoint.files import atomic_write_bytes
from chef_genius.checkpoint.runlock import RunLock
from chef_genius.errors import ReportedByRankZero, UserError
from chef_genius.settings import config_file, schema
from chef_genius.train.base import TrainerBase
from chef_genius.train import distributed as dist


class RunFolder(TrainerBase):
    """The ``Trainer``'s run folder and mirror (its attributes are declared on ``TrainerBase``)."""

    def _write_settings(self) -> None:
        """The settings this session resolved, as a reusable config file in the run folder (rewritten by
        each session; ``--config RUN/settings.yaml`` gives them again)."""
        if self.is_main:
            atomic_write_bytes(
                self.output / config_file.SETTINGS_FILE,
                config_file.settings_yaml(self.config, schema.SECTIONS).encode("utf-8"),
            )

    def _hold_run_folder(self) -> None:
        """One run per run folder: refused (exit 2) while a live run holds it; a dead run's leftovers go."""

        def hold() -> None:
            disk.prepare_output(self.output)
            self.run_lock = RunLock(self.output).acquire()
            self.run_lock.remove_leftovers()

        self._on_main(hold)

    def _on_main(self, action) -> None:
        """``action()`` on rank 0; its refusal (``UserError``) ends every rank (the others would wait in
        its next collective)."""
        refusal = None
        if self.is_main:
            try:
                action()
            except UserError as err:
                refusal = err
        shared = dist.broadcast_object(self.accelerator, None if refusal is None else (str(refusal), refusal.exit_code))
        if refusal is not None:
            raise refusal
        if shared is not None:
            raise ReportedByRankZero(*shared)

    def _fill_from_mirror(self) -> None:
        """A resume with a mirror (the command's, else the one the local checkpoints were written with):
        the mirror's newest healthy checkpoint is fetched first when it is newer than the local ones
        (a fresh machine: the run folder is empty). Wrong credentials or a missing bucket: exit 2 here."""
        c = self.config
        if not (c.auto_resume or c.resume_from_checkpoint == "latest"):
            return
        url = c.checkpoint_mirror or fetch.saved_mirror(self.output, "checkpoint_mirror")
        if url:
            self.mirror_store = remote.open_store(url)
            self.mirror_store.check_access()
            fetch.fill_run_folder(self.mirror_store, self.output, c.verify_hashes)

    def _open_mirror(self) -> None:
        """The run's mirror (a run setting: a resume keeps the checkpoint's unless the command names one),
        checked before training: refused now (exit 2), not at the first save."""
        url = self.config.checkpoint_mirror
        if not url:
            self.mirror_store = None
        elif self.mirror_store is None or self.mirror_store.url != url.rstrip("/"):
            self.mirror_store = remote.open_store(url)
            self.mirror_store.check_access()
