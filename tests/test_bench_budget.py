"""``python -m bench --gpu --budget-s 480``: what it plans to run fits the budget by its own estimates
(fast: no benchmark runs here; tests/test_bench.py runs a spent budget end to end)."""

from __future__ import annotations


def test_gpu_budget_keeps_the_estimated_benchmarks_within_eight_minutes():
    from bench.__main__ import BENCHMARKS, GPU_COST_S, SETUP_COST_S, WHOLE_EPOCHS_COST_S, budgeted
    from bench.common import make_profile

    profile = make_profile("full", "flan-t5-large", gpu=True)
    planned = budgeted(profile, set(BENCHMARKS), 480, gpu=True)
    chosen = [name for name, why in planned.items() if why is None]
    assert SETUP_COST_S + sum(GPU_COST_S[name] for name in chosen) <= 480
    assert "throughput" in chosen and not profile.whole_epochs  # the three whole-epoch contenders do not fit
    assert profile.repeats == profile.checkpoint_repeats == 1
    assert profile.warmup_steps == profile.timed_steps == profile.eval_every  # one save in the timed window
    small = make_profile("full", "flan-t5-large", gpu=True)
    left_out = budgeted(small, set(BENCHMARKS), 200, gpu=True)
    assert [n for n, why in left_out.items() if why] and all("--budget-s 200" in why for why in left_out.values() if why)
    roomy = make_profile("full", "flan-t5-large", gpu=True)
    budgeted(roomy, set(BENCHMARKS), 480 + WHOLE_EPOCHS_COST_S, gpu=True)
    assert roomy.whole_epochs
