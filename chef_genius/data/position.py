"""Where a run is in its data: the epoch, the samples of it already consumed, and what that count means.

A count of consumed samples only means something for one sample order, and the order of epoch E is a
pure function of (number of samples, seed, E, length grouping, group size) (see
``chef_genius/data/sampler.py``). So the position carries those too, and restoring it under another
order is refused: the same count applied to another permutation repeats some recipes and never shows
others, silently. ``--allow-config-change`` accepts it with one warning line.

Saved as the checkpoint's ``data_position`` (the keys are today's, so older checkpoints load; a
position rebuilt by the doctor may carry only ``epoch`` and ``samples_in_epoch``, and what it lacks is
not checked). ``mixture``: with several ``--data`` sources, the training recipes and weight of each
(``data/mixture.py``), which the order also depends on; saved only then. ``skipped_ranges``: the data
a rollback jumped over (``skip_to``), for the record; a
resume continues from the position after them, like the run that skipped them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from chef_genius.errors import UserError
from chef_genius.settings.fields import flag_name, settings_of, spec_of
from chef_genius.settings.schema import TrainConfig

log = logging.getLogger("chef_genius")

# attribute -> (key in the saved dict, the flag a user changes it with); the settings' keys are declared
# in the schema (``setting(position_key=...)``)
_IDENTITY = {
    f.name: (spec_of(f).position_key, flag_name(f)) for f in settings_of(TrainConfig) if spec_of(f).position_key
}
_IDENTITY["num_samples"] = ("num_samples", "the training recipes (data file, max lengths, --eval-split-ratio)")


@dataclass
class DataPosition:
    epoch: int = 0  # 0-based epoch in progress (an epoch just finished counts as the next)
    samples_in_epoch: int = 0  # samples of that epoch already consumed, all processes together
    seed: int = TrainConfig.seed
    num_samples: int = 0
    group_by_length: bool = TrainConfig.group_by_length
    length_group_size: int = TrainConfig.length_group_size
    max_tokens_per_batch: int = TrainConfig.max_tokens_per_batch  # 0: fixed --batch-size micro-batches
    skipped: list = field(default_factory=list)  # [epoch, sample, to epoch, to sample] per rollback's skip
    mixture: list | None = None  # several sources: [training recipes, weight] each, in canonical order

    @classmethod
    def saved_at(cls, saved: dict) -> DataPosition:
        """The epoch and sample of a saved position, as they are (nothing checked)."""
        return cls(epoch=int(saved.get("epoch", 0)), samples_in_epoch=int(saved.get("samples_in_epoch", 0)))

    def advance(self, samples: int) -> None:
        """``samples`` more consumed (all processes together); the last step of an epoch starts the next."""
        self.samples_in_epoch = min(self.num_samples, self.samples_in_epoch + samples)
        if self.samples_in_epoch >= self.num_samples:
            self.epoch, self.samples_in_epoch = self.epoch + 1, 0

    def skip_to(self, epoch: int, samples_in_epoch: int) -> tuple[int, int, int, int]:
        """Jump forward to (``epoch``, ``samples_in_epoch``) without training on what lies between (a
        rollback's skip); the skipped range is kept with the position and returned."""
        skipped = (self.epoch, self.samples_in_epoch, int(epoch), int(samples_in_epoch))
        self.skipped.append(list(skipped))
        self.epoch, self.samples_in_epoch = int(epoch), int(samples_in_epoch)
        return skipped

    @property
    def fraction(self) -> float:
        """Epochs done, as a float (for logs and plots)."""
        return self.epoch + self.samples_in_epoch / max(self.num_samples, 1)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "samples_in_epoch": self.samples_in_epoch,
            **{key: getattr(self, name) for name, (key, _) in _IDENTITY.items()},
            **({"skipped_ranges": [list(r) for r in self.skipped]} if self.skipped else {}),
            **({"mixture": [list(m) for m in self.mixture]} if self.mixture is not None else {}),
        }

    def differences(self, saved: dict) -> list[str]:
        """How the sample order ``saved`` was taken under differs from this one (only keys it has)."""
        changes = []
        for name, (key, flag) in _IDENTITY.items():
            if saved.get(key) is not None and saved[key] != getattr(self, name):
                changes.append(f"{flag}: {saved[key]} in the checkpoint, {getattr(self, name)} now")
        if saved.get("mixture") is not None:  # a position without it (older, or rebuilt by the doctor): unchecked
            before, now = _mixture(saved.get("mixture")), _mixture(self.mixture)
            if before != now:
                changes.append(f"the sources' [training recipes, weight]: {before} in the checkpoint, {now} now")
        return changes

    def load_state_dict(self, saved: dict, allow_change: bool = False) -> None:
        """Continue at ``saved``'s epoch and sample; refuse another sample order unless ``allow_change``."""
        changes = self.differences(saved)
        if changes and not allow_change:
            raise UserError(
                "the checkpoint's data position was taken under another sample order ("
                + "; ".join(changes)
                + "): resuming would repeat some recipes and skip others; "
                "resume with the checkpoint's settings, or pass --allow-config-change to accept it"
            )
        if changes:
            log.warning(
                "data position restored under another sample order (--allow-config-change): %s; this "
                "epoch will repeat some recipes and skip others",
                "; ".join(changes),
            )
        where = self.saved_at(saved)
        self.epoch, self.samples_in_epoch = where.epoch, where.samples_in_epoch
        self.skipped = [list(map(int, r)) for r in saved.get("skipped_ranges") or ()]
        if self.samples_in_epoch >= self.num_samples:  # a smaller data set: that epoch is over
            self.epoch, self.samples_in_epoch = self.epoch + 1, 0


def _mixture(saved) -> list | None:
    return None if saved is None else [[int(n), float(w)] for n, w in saved]
