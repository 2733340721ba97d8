"""The data position: saved and restored by the sampler, refused under another sample order."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from chef_genius.data.sampler import ResumableBatchSampler
from chef_genius.errors import UserError

LENGTHS = np.arange(94) % 17
SAVED_KEYS = {"epoch", "samples_in_epoch", "sampler_seed", "num_samples", "group_by_length", "length_group_size"}


def _sampler(num_samples=94, seed=42, lengths=LENGTHS, group_size=32) -> ResumableBatchSampler:
    return ResumableBatchSampler(num_samples, 8, seed, None if lengths is None else lengths[:num_samples], group_size)


def _saved() -> dict:
    sampler = _sampler()
    sampler.set_position(1, 40)
    sampler.position.advance(16)  # two micro-batches trained on since the iteration began
    return sampler.state_dict()


def test_the_saved_position_keeps_its_keys_and_resumes_at_the_next_sample():
    saved = _saved()
    # the keys checkpoints have always had, plus the token budget (--max-tokens-per-batch, 0 when off)
    assert set(saved) == SAVED_KEYS | {"max_tokens_per_batch"}
    assert (saved["epoch"], saved["samples_in_epoch"], saved["sampler_seed"]) == (1, 56, 42)
    resumed = _sampler()
    resumed.load_state_dict(saved)
    uninterrupted = _sampler()
    uninterrupted.set_position(1, 0)
    assert [i for batch in resumed for i in batch] == [i for batch in uninterrupted for i in batch][56:]


@pytest.mark.parametrize(
    "other, flag",
    [
        (dict(seed=7), "--seed: 42 in the checkpoint, 7 now"),
        (dict(lengths=None), "--no-group-by-length: True in the checkpoint, False now"),
        (dict(group_size=16), "--length-group-size: 32 in the checkpoint, 16 now"),
        (dict(num_samples=90), "the training recipes"),
    ],
    ids=["seed", "grouping", "group-size", "sample-count"],
)
def test_a_position_of_another_sample_order_is_refused_unless_allowed(other, flag, caplog):
    saved = _saved()
    with pytest.raises(UserError, match=flag) as err:
        _sampler(**other).load_state_dict(saved)
    assert err.value.exit_code == 2 and "--allow-config-change" in str(err.value)
    allowed = _sampler(**other)
    with caplog.at_level(logging.WARNING, logger="chef_genius"):
        allowed.load_state_dict(saved, allow_change=True)
    assert [r.getMessage() for r in caplog.records if "another sample order" in r.getMessage()]
    assert (allowed.position.epoch, allowed.position.samples_in_epoch) == (1, 56)


def test_a_position_rebuilt_without_its_order_is_taken_as_it_is():
    resumed = _sampler(seed=7)
    resumed.load_state_dict({"epoch": 0, "samples_in_epoch": 24})  # what the doctor writes without settings
    assert (resumed.epoch, resumed.start) == (0, 24)


def test_a_position_past_the_end_of_a_smaller_data_set_starts_the_next_epoch():
    smaller = _sampler(num_samples=40)
    smaller.load_state_dict({"epoch": 0, "samples_in_epoch": 56})
    assert (smaller.position.epoch, smaller.position.samples_in_epoch) == (1, 0) and len(smaller) == 5
