"""How a training session ends: the final checkpoint and model (never one whose numbers are not
finite), a stop signal's checkpoint committed before exit 75 (and the Slurm job requeued), the loader
workers ended and the run folder given back."""

from __future__ import annotations

from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.errors import Diverged, Preempted, SaveError
from chef_genius.train.base import TrainerBase
from chef_genius.train import preemption


class Ending(TrainerBase):
    """The ``Trainer``'s end of a session (its attributes are declared on ``TrainerBase``, train/base.py)."""

    def _stop_preempted(self) -> None:
        """Exit 75 once the stop's checkpoint is committed; exit 4 when it could not be written."""
        self.maybe_log(force=True)
        step, name = self.state.global_step, self.preemption.signal_name
        if not self.checkpoints.wait():
            raise SaveError(
                f"stopped by {name or 'a signal'} at step {step} but its checkpoint could not be saved "
                "(see the warning above)"
            )
        self.checkpoints.drain_mirror()  # a warning when it did not make it: the local checkpoint is there
        self.preemption.settled = True
        requeued = self.config.requeue_on_preemption and self.is_main and preemption.requeue_slurm_job()
        raise Preempted(
            f"{name or 'signal'} received: saved checkpoint-{step} and exited with code 75; "
            + (
                "the Slurm job is requeued and resumes with --auto-resume"
                if requeued
                else "continue with --resume-from-checkpoint latest"
            )
        )

    def finish(self) -> None:
        """Flush the last log, validate, checkpoint the final step, commit the final model for use; never
        a model whose numbers are not finite (``Diverged``, naming the newest healthy checkpoint)."""
        self.maybe_log(force=True)
        weights, moments = self._numbers_finite()
        if not weights:
            self.checkpoints.wait()
            target = ckmanifest.newest_healthy(self.output) if self.is_main else None
            raise Diverged(
                f"the final weights (step {self.state.global_step}) are not finite: no final model was "
                "saved; "
                + (
                    f"the newest healthy checkpoint is {target}"
                    if target
                    else "no healthy checkpoint of this run exists"
                )
            )
        if self.checkpoints.last_step != self.state.global_step:
            self.maybe_evaluate(force=True)
            self.health_slice.numbers = (weights, moments)
            self.run.settle_tokens()
            self.checkpoints.save(self.state.global_step)
        if preemption.agree(self.accelerator, self.preemption.requested)[0]:
            self._stop_preempted()  # the final model is written by the resume (it has nothing left to train)
        self.checkpoints.finish(also_lost=self.reporters.losses())

    def close(self) -> None:
        """End the loader workers and give the run folder back (after the final model is written; also
        after a failed setup or a stop). Persistent workers ignore SIGTERM (the main process decides when
        a preempted run stops), so multiprocessing's exit handler could not end them: a process whose
        trainer is still referenced (a traceback, a test) would wait for them forever at exit."""
        for loader in (getattr(self, "loader", None), getattr(self, "eval_loader", None)):
            iterator = getattr(loader, "_iterator", None)
            if loader is not None and iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                loader._iterator = None
        if self.run_lock is not None:
            self.run_lock.release()
            self.run_lock = None
