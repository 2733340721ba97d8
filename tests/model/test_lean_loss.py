"""The lean loss (model/lean_loss.py) gives the plain cross-entropy's values and gradients."""

from __future__ import annotations

import gc
import types

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
        torch.testing.assert_close(
            lean_loss.cross_entropy_sum(hidden, weight, labels, chunk_rows), expected, rtol=1e-6, atol=1e-5
        )


@pytest.mark.parametrize("chunks", [1, 4, 13, 20])  # 20 > 13 rows: some chunks are empty
def test_a_fixed_number_of_chunks_gives_the_same_loss_and_gradients(chunks):
    """The compiled head's variant: as many chunks as the run's largest batch needs, whatever this one's."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(13, 16, generator=g, requires_grad=True)
    weight = torch.randn(40, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 40, (13,), generator=g)
    expected = _plain(hidden, weight, labels)
    want_h, want_w = torch.autograd.grad(expected * 0.37, (hidden, weight))
    got = lean_loss.cross_entropy_sum_in_chunks(hidden, weight, labels, chunks)
    got_h, got_w = torch.autograd.grad(got * 0.37, (hidden, weight))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got_h, want_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(
            lean_loss.cross_entropy_sum_in_chunks(hidden, weight, labels, chunks), expected, rtol=1e-6, atol=1e-5
        )
    assert lean_loss.chunks_for(16 * 512) == 8 and lean_loss.chunks_for(1) == 1


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
    batch = {
        "input_ids": torch.randint(2, vocab, (3, 8), generator=g),
        "attention_mask": torch.ones(3, 8, dtype=torch.long),
        "decoder_input_ids": torch.randint(2, vocab, (3, 16), generator=g),
        "labels": labels,
    }
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
    plain = F.cross_entropy(
        logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=LABEL_PAD, reduction="sum"
    )
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


def _region_inputs(batch):
    positions, targets = lean_loss.label_positions(batch["labels"], LABEL_PAD)
    return [batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")] + [positions, targets]


@pytest.fixture(scope="module")
def compiled_region(tiny_batch):
    """One trace of the region the trainer compiles, shared by the two tests below (tracing it takes tens of
    seconds on these cores): ``torch.compile(summed_loss, dynamic=True)`` with the fixed-chunk head, in
    train mode (dropout on, as the trainer runs it), through a backend that notes dynamo's graphs and
    hands them to aot_eager (dynamo and autograd tracing, no code generation, so it runs here). Beside it,
    the eager lean loss (the head's row-chunk loop) on the same batch under the same seed: aot_eager runs
    the same dropout kernels in the same order, so both draw the same masks.

    Module floats (layer-norm epsilons, dropout rates) are traced as constants (``specialize_float``):
    left symbolic, dynamo traces them, fails to turn them into tensors and traces the whole region a
    second time with them constant. Only the graphs' inputs are kept: the graphs hold the whole trace,
    which would slow every later garbage collection of the session."""
    import functools
    import torch._dynamo
    from torch._dynamo.utils import counters

    model, batch = tiny_batch
    model.train()
    head = lean_loss.install(model)
    # copies: a dynamic=True compile marks the tensors it is given as dynamic, and a later trace of the
    # batch's own tensors (the explain below) would then be dynamic too, and twice as slow
    inputs = [t.clone() for t in _region_inputs(batch)]
    region = functools.partial(lean_loss.summed_loss, model, head)
    torch.manual_seed(3)
    eager = region(*inputs)
    eager_grads = _grads(model, eager)
    graphs = []

    def keep_graphs(graph, example_inputs, **kwargs):
        graphs.append(graph)
        return torch._dynamo.lookup_backend("aot_eager")(graph, example_inputs, **kwargs)

    try:
        head.chunks = 3
        torch._dynamo.reset()  # also clears dynamo's counters
        torch.manual_seed(3)
        with torch._dynamo.config.patch(specialize_float=True):
            compiled = torch.compile(region, backend=keep_graphs, dynamic=True)(*inputs)
        breaks = dict(counters["graph_break"])
        armed_after = head.armed
        compiled_grads = _grads(model, compiled)
    finally:
        head.chunks = None
        torch._dynamo.reset()
    # each graph's inputs: (name, whether dynamo traced it as a tensor)
    graph_inputs = [
        [
            (n.name, isinstance(n.meta.get("example_value"), torch.Tensor))
            for n in g.graph.nodes
            if n.op == "placeholder"
        ]
        for g in graphs
    ]
    graphs.clear()
    gc.collect()
    return types.SimpleNamespace(
        model=model,
        graph_inputs=graph_inputs,
        breaks=breaks,
        armed_after=armed_after,
        eager=eager.detach(),
        eager_grads=eager_grads,
        compiled=compiled.detach(),
        compiled_grads=compiled_grads,
    )


def test_the_compiled_training_forward_is_one_graph_from_the_token_ids_to_the_loss(compiled_region, tiny_batch):
    """The trainer compiles ``summed_loss``: the forward without a decoder cache and the loss, as one
    graph whose inputs are the batch's five tensors (and the weights): no break at the head, no cache
    object rebuilt at a split. With the head's row-chunk loop (eager ``cross_entropy_sum``) the graph
    breaks there."""
    import functools
    import torch._dynamo

    traced = compiled_region
    assert len(traced.graph_inputs) == 1 and traced.breaks == {}, traced.breaks
    (placeholders,) = traced.graph_inputs
    data = [
        name for name, is_tensor in placeholders if is_tensor and "_parameters_" not in name and "_buffers_" not in name
    ]
    assert len(data) == 5, data  # the sizes are symbols (dynamic=True), not tensors
    weights = [name for name, _ in placeholders if "_parameters_" in name]
    assert len(weights) == len(list(traced.model.parameters()))
    assert traced.armed_after is None

    model, _ = tiny_batch
    model.train()
    head = lean_loss.install(model)
    region = functools.partial(lean_loss.summed_loss, model, head)
    assert head.chunks is None  # the eager head: its loop is kept out of graphs, so the region splits
    try:
        torch._dynamo.reset()
        assert torch._dynamo.explain(region)(*_region_inputs(tiny_batch[1])).graph_break_count >= 1
    finally:
        torch._dynamo.reset()


def test_the_compiled_region_gives_the_eager_loss_and_gradients(compiled_region):
    """Traced through torch.compile, the region's loss and gradients (dropout on, the same seed) are the
    eager lean loss's."""
    traced = compiled_region
    torch.testing.assert_close(traced.compiled, traced.eager, rtol=1e-6, atol=1e-5)
    assert traced.compiled_grads.keys() == traced.eager_grads.keys()
    for name, want in traced.eager_grads.items():
        got = traced.compiled_grads[name]
        error, scale = (got - want).abs().max().item(), want.abs().max().item()
        assert error <= 1e-5 * scale, f"{name}: gradients differ by {error} (scale {scale})"


def test_training_steps_go_through_the_compiled_region_and_validation_does_not(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch
):
    """--compile compiles the loss function once, called with the batch's tensors only; validation (eval
    mode, no gradients: a full recompile) takes the eager path. torch.compile is replaced by a recorder
    here (compiling for real takes minutes on these cores)."""
    from conftest import run_training, train_args

    compiled, calls = [], []

    def recorder(fn, **options):
        compiled.append(options)

        def region(*args):
            calls.append((torch.is_grad_enabled(), [type(a) for a in args]))
            return fn(*args)

        return region

    monkeypatch.setattr(torch, "compile", recorder)
    out = tmp_path / "run"
    assert (
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                out,
                cache_dir,
                "--compile",
                "--max-steps",
                "2",
                "--eval-steps",
                "2",
                "--save-steps",
                "2",
                "--gradient-accumulation-steps",
                "2",
            )
        )
        == 0
    )
    assert compiled == [{"dynamic": True}]
    assert len(calls) == 4  # 2 steps x 2 micro-batches; none from the validation at step 2
    assert all(grad and kinds == [torch.Tensor] * 5 for grad, kinds in calls)
    import json

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r["type"] == "eval" for r in records)
