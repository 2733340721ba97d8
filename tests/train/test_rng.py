"""The RNG state layout (``train/rng.py`` owns it): what a run saves, what repairs and conversions build."""

from __future__ import annotations

import random

import numpy as np
import torch

from chef_genius.train import rng
from conftest import same_values


def test_capture_holds_plain_values_and_restores_every_stream():
    rng.seed_everything(7)
    saved = rng.capture()
    assert isinstance(saved["python"], list) and isinstance(saved["python"][1], list)
    assert saved["numpy"]["keys"].dtype == torch.int64 and isinstance(saved["numpy"]["pos"], int)
    drawn = (random.random(), np.random.rand(), torch.rand(1))
    rng.restore(saved)
    assert (random.random(), np.random.rand()) == drawn[:2] and torch.equal(torch.rand(1), drawn[2])


def test_from_parts_of_foreign_states_is_capture_layout():
    """A legacy or accelerate file holds the generators' raw states (numpy arrays, tuples): converted,
    they are exactly what ``capture`` would have saved, so ``restore`` continues the same draws."""
    rng.seed_everything(11)
    raw = (random.getstate(), np.random.get_state(), torch.get_rng_state(), [])
    assert same_values(rng.from_parts(*raw), rng.capture())
    assert rng.from_parts(None, raw[1], raw[2]) == {}  # a state without python's generator is not usable


def test_seeded_leaves_this_process_untouched_and_draws_like_the_seed():
    rng.seed_everything(3)
    before = rng.capture()
    state = rng.seeded(1234)
    assert same_values(rng.capture(), before)
    rng.restore(state)
    assert random.random() == random.Random(1234).random()
    assert np.random.rand() == np.random.RandomState(1234).rand()
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(1234)))
