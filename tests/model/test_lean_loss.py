"""The lean loss (model/lean_loss.py) gives the plain cross-entropy's values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chef_genius.data.tokenized import LABEL_PAD
from chef_genius.model import lean_loss


def _plain(hidden, weight, labels):
    return F.cross_entropy(F.linear(hidden, weight).float(), labels, reduction="sum")


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 64])
def test_chunked_loss_and_gradients_equal_the_plain_cross_entropy(chunk_rows):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(13, 16, generator=g, requires_grad=True)
    weight = torch.randn(40, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 40, (13,), generator=g)

    expected = _plain(hidden, weight, labels)
    want_h, want_w = torch.autograd.grad(expected * 0.37, (hidden, weight))
    got = lean_loss.cross_entropy_sum(hidden, weight, labels, chunk_rows)
    got_h, got_w = torch.autograd.grad(got * 0.37, (hidden, weight))

    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got_h, want_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # evaluation: the same value, no gradient work
        torch.testing.assert_close(lean_loss.cross_entropy_sum(hidden, weight, labels, chunk_rows), expected,
                                   rtol=1e-6, atol=1e-5)


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_the_same():
    """Under LoRA the head is frozen: the vocabulary x width gradient is neither computed nor returned."""
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(11, 16, generator=g, requires_grad=True)
    weight = torch.randn(40, 16, generator=g)  # requires_grad=False
    labels = torch.randint(0, 40, (11,), generator=g)
    (want,) = torch.autograd.grad(_plain(hidden, weight, labels) * 0.5, (hidden,))
    got = lean_loss.cross_entropy_sum(hidden, weight, labels, 4)
    assert got.grad_fn.saved_tensors[1].numel() == 1  # no (vocabulary x width) buffer kept for the backward
    (got_h,) = torch.autograd.grad(got * 0.5, (hidden,))
    torch.testing.assert_close(got_h, want, rtol=1e-5, atol=1e-6)
    assert weight.grad is None


@pytest.fixture(scope="module")
def tiny_batch(tiny_model):
    from chef_genius.model.loading import load_model
    g = torch.Generator().manual_seed(1)
    model = load_model(tiny_model)
    vocab = model.config.vocab_size
    labels = torch.randint(2, vocab, (3, 16), generator=g)
    labels[0, 9:] = LABEL_PAD  # ragged targets, as the collator pads them
    labels[2, 4:] = LABEL_PAD
    batch = {"input_ids": torch.randint(2, vocab, (3, 8), generator=g),
             "attention_mask": torch.ones(3, 8, dtype=torch.long),
             "decoder_input_ids": torch.randint(2, vocab, (3, 16), generator=g), "labels": labels}
    return model, batch


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_the_tiny_model_trains_on_the_same_loss_and_gradients(tiny_batch):
    model, batch = tiny_batch
    model.train()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")}
    torch.manual_seed(3)  # dropout: the same mask for both passes
    logits = model(**inputs).logits
    plain = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=LABEL_PAD,
                            reduction="sum")
    want = _grads(model, plain)
    keys = set(model.state_dict())

    head = lean_loss.install(model)
    head.chunk_rows = 5  # several chunks over the 9 + 16 + 4 labelled positions
    assert set(model.state_dict()) == keys, "the saved tensors' names must not change"
    positions, targets = lean_loss.label_positions(batch["labels"], LABEL_PAD)
    assert positions.numel() == 9 + 16 + 4
    torch.manual_seed(3)
    with lean_loss.targets(head, positions, targets):
        lean = model(**inputs).logits
    assert head.armed is None
    got = _grads(model, lean)

    torch.testing.assert_close(lean, plain, rtol=1e-6, atol=1e-5)
    assert got.keys() == want.keys()
    for name in want:
        # float tolerance relative to the tensor's scale (the weight gradient is summed chunk by chunk)
        error, scale = (got[name] - want[name]).abs().max().item(), want[name].abs().max().item()
        assert error <= 1e-5 * scale, f"{name}: gradients differ by {error} (scale {scale})"
    torch.manual_seed(3)
    with torch.no_grad():  # unarmed (generation, eval of the logits): the plain projection
        torch.testing.assert_close(model(**inputs).logits, logits.detach())
