"""Several --data sources: the spelling of a weight, what an epoch takes of each source, the identity a
resume compares, and the duplicates across sources (pure functions, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from chef_genius.data import dedup, mixture
from chef_genius.data.across import across_sources
from chef_genius.data.fingerprint import content_identity
from chef_genius.data.mixture import Mixture, Source, parse_source
from chef_genius.data.sampler import ResumableBatchSampler
from chef_genius.errors import UserError


def test_a_weight_is_a_trailing_number_and_an_existing_path_wins(tmp_path):
    assert parse_source("a.csv") == Source("a.csv", 1.0)
    assert parse_source("b.jsonl.gz:0.5") == Source("b.jsonl.gz", 0.5)
    assert parse_source(r"C:\data\recipes.csv") == Source(r"C:\data\recipes.csv", 1.0)  # no number after the colon
    assert parse_source(r"C:\data\recipes.csv:2") == Source(r"C:\data\recipes.csv", 2.0)
    odd = tmp_path / "odd.csv:2"
    odd.write_text("x")
    assert parse_source(str(odd)) == Source(str(odd), 1.0)  # a file of that very name: the name is the path
    for bad in ("a.csv:0", "a.csv:-1", "a.csv:nan", "a.csv:inf"):
        with pytest.raises(UserError, match="weight must be a positive number"):
            parse_source(bad)


def test_weights_set_each_sources_share_of_every_epoch():
    m = Mixture((10, 6, 7), (1.0, 2.0, 0.5))
    assert m.per_epoch == [10, 12, 4] and m.size == 26  # 0.5 x 7 = 3.5, rounded half up
    offsets = m.offsets
    for epoch in range(3):
        rows = m.rows(seed=42, epoch=epoch)
        a, b, c = (rows[(rows >= offsets[i]) & (rows < offsets[i + 1])] - offsets[i] for i in range(3))
        assert sorted(a) == list(range(10))  # weight 1: every recipe exactly once
        assert sorted(b) == sorted(list(range(6)) * 2)  # weight 2: every recipe exactly twice
        assert len(c) == 4 and len(set(c)) == 4  # weight 0.5: a half, without repeats
    halves = {tuple(sorted(m.rows(42, e)[-4:])) for e in range(6)}
    assert len(halves) > 1  # another half in another epoch
    assert np.array_equal(m.rows(42, 3), m.rows(42, 3))  # pure
    assert not np.array_equal(m.rows(42, 3), m.rows(7, 3))  # seeded


def test_a_mixture_of_weight_1_orders_its_samples_as_one_file_of_them():
    lengths = np.arange(30) % 7
    plain = ResumableBatchSampler(30, 4, 42, lengths, 8, mixture=Mixture((10, 20), (1.0, 1.0)))
    one = ResumableBatchSampler(30, 4, 42, lengths, 8)
    assert [list(b) for b in plain] == [list(b) for b in one]


def test_a_weighted_sampler_counts_the_epoch_and_shares_it_between_ranks():
    m = Mixture((10, 6), (1.0, 0.5))
    ranks = [ResumableBatchSampler(m.size, 2, 42, None, 8, 2, r, mixture=m) for r in (0, 1)]
    assert ranks[0].num_samples == 13 and ranks[0].position.mixture == [[10, 1.0], [6, 0.5]]
    seen = [i for r in ranks for batch in r for i in batch if i >= 0]
    assert sorted(seen) == sorted(m.rows(42, 0).tolist())  # every sample of the epoch once, over both ranks


def test_token_budget_batches_cover_a_weighted_epoch():
    from chef_genius.data.sampler import TokenBudgetSampler

    m = Mixture((10, 6), (1.0, 1.5))
    lengths = np.arange(16) % 5 + 3
    sampler = TokenBudgetSampler(m.size, 40, 42, lengths * 2, lengths, lengths, 8, mixture=m)
    seen = sorted(i for batch in sampler for i in batch)
    assert seen == sorted(m.rows(42, 0).tolist()) and sampler.num_samples == 19


def test_the_identity_is_independent_of_order_and_names_what_changed(tmp_path):
    a, b, c = (tmp_path / n for n in ("a.csv", "b.csv", "c.csv"))
    for i, p in enumerate((a, b, c)):
        p.write_text(f"content {i}\n")
    both = mixture.identity([Source(str(a)), Source(str(b), 0.5)])
    assert both == mixture.identity([Source(str(b), 0.5), Source(str(a))])
    assert mixture.identity_changes(both, both) == []
    assert mixture.identity_changes(both, mixture.identity([Source(str(a)), Source(str(b), 2)])) == [
        "b.csv weight 0.5 -> 2"
    ]
    assert mixture.identity_changes(both, mixture.identity([Source(str(a))])) == ["b.csv removed"]
    added = mixture.identity([Source(str(a)), Source(str(b), 0.5), Source(str(c))])
    assert mixture.identity_changes(both, added) == ["c.csv added"]
    b.write_text("edited\n")
    assert mixture.identity_changes(both, mixture.identity([Source(str(a)), Source(str(b), 0.5)]))[0].startswith(
        "b.csv changed"
    )
    # one file of weight 1 is recorded as checkpoints always recorded it
    assert mixture.identity([Source(str(a))]) == content_identity(a)


def test_the_same_content_twice_is_refused(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("same\n")
    b.write_text("same\n")
    with pytest.raises(UserError, match="have the same content"):
        mixture.canonical([Source(str(a)), Source(str(b))])
    with pytest.raises(UserError, match="have the same content"):  # one file given twice
        mixture.canonical([Source(str(a)), Source(str(a))])


def _signatures(texts):
    keys, digests = dedup.signatures(texts)
    return keys, dedup.sketch(digests)


RECIPE = (
    "{t}\nIngredients:\n- 2 cups flour\n- 1 egg\n- {i}\nDirections:\n1. Mix the flour and the egg with the {i}.\n"
    "2. Bake {t} for 30 minutes until golden.\n3. Cool on a rack and serve with {i}."
)


def test_a_later_source_twin_of_an_earlier_recipe_is_found_exact_or_near():
    first = [RECIPE.format(t=t, i=i) for t, i in (("Apple Cake", "apples"), ("Plum Tart", "plums"))]
    second = [
        RECIPE.format(t="APPLE CAKE", i="apples"),  # the same recipe, re-cased: exact
        RECIPE.format(t="Plum Tart", i="plums").replace("until golden", "until golden brown"),  # near
        RECIPE.format(t="Pear Pie", i="pears"),  # another recipe
    ]
    (k1, b1), (k2, b2) = _signatures(first), _signatures(second)
    found, keys = across_sources([k1, k2], [b1, b2], [np.arange(2), np.arange(3)], 0.75)
    assert found[0] == []
    kinds = {a.row: (a.kind, a.twin_source, a.twin) for a in found[1]}
    assert kinds == {0: ("exact_across", 0, 0), 1: ("near_across", 0, 1)}
    assert keys[1][0] == k1[0] and keys[1][1] == k1[1]  # a twin joins its earlier recipe's cluster
    assert keys[1][2] == k2[2]


def test_the_decision_across_sources_reads_back_as_it_was_found(tmp_path):
    from chef_genius.data import across

    first = [RECIPE.format(t=t, i=i) for t, i in (("Apple Cake", "apples"), ("Plum Tart", "plums"))]
    second = [RECIPE.format(t="APPLE CAKE", i="apples"), RECIPE.format(t="Pear Pie", i="pears")]
    (k1, b1), (k2, b2) = _signatures(first), _signatures(second)
    found, keys = across_sources([k1, k2], [b1, b2], [np.arange(2), np.arange(2)], 0.75)
    across.save(tmp_path / "across.npy", found)
    again = across.load(tmp_path / "across.npy", 2)
    assert again == found and len(found[1]) == 1
    assert all(np.array_equal(a, b) for a, b in zip(across.clustered_keys([k1, k2], again), keys))


def test_a_position_taken_under_another_mixture_is_refused_unless_allowed():
    taken = ResumableBatchSampler(13, 2, 42, None, 8, mixture=Mixture((10, 6), (1.0, 0.5)))
    taken.set_position(0, 4)
    saved = taken.state_dict()
    other = ResumableBatchSampler(13, 2, 42, None, 8, mixture=Mixture((10, 6), (1.0, 0.55)))  # the same epoch size
    with pytest.raises(UserError, match=r"the sources' \[training recipes, weight\]") as err:
        other.load_state_dict(saved)
    assert err.value.exit_code == 2
    other.load_state_dict(saved, allow_change=True)
    assert other.position.samples_in_epoch == 4
    rebuilt = {k: v for k, v in saved.items() if k != "mixture"}  # as the doctor rebuilds one
    ResumableBatchSampler(13, 2, 42, None, 8, mixture=Mixture((10, 6), (1.0, 0.5))).load_state_dict(rebuilt)


def test_reworded_copies_in_another_source_are_found_as_often_as_within_one():
    """The search across sources judges a pair by the saved sketches (8 bits of each MinHash value): its
    estimate stays within 0.02 of the full MinHash's (0.003 on average), so it finds the planted reworded copies the
    within-file search would (judging by the count of equal band keys found 0.87 where MinHash
    found 0.93 here)."""
    from chef_genius.data.recipes import format_target, recipe_from_fields
    from chef_genius.devtools.planted import planted_recipes

    recipes, copies = planted_recipes(2000, 600, seed=5)
    keys, digests = dedup.signatures(
        [format_target(recipe_from_fields(r["title"], r["ingredients"], r["directions"])) for r in recipes]
    )
    copy = np.array([c for c, _, kind in copies if kind == "reworded"])
    original = np.array([o for _, o, kind in copies if kind == "reworded"])
    minhash = (digests[copy] == digests[original]).mean(axis=1)
    sketches = dedup.sketch(digests)
    estimate = dedup.sketch_similarity(sketches[copy], sketches[original])
    assert np.abs(estimate - minhash).max() < 0.02 and np.abs(estimate - minhash).mean() < 0.003
    within = (minhash >= 0.74).mean()
    assert 0.85 < within < 1  # some rewordings fall below the threshold: the test can tell rules apart
    firsts = np.setdiff1d(np.arange(2000), copy)  # the originals in one source, the reworded copies in another
    found, _ = across_sources(
        [keys[firsts], keys[copy]],
        [sketches[firsts], sketches[copy]],
        [np.arange(len(firsts)), np.arange(len(copy))],
        0.74,
    )
    assert len(found[1]) / len(copy) >= within - 0.01
    assert all(firsts[a.twin] == o for a, o in zip(found[1], original[[a.row for a in found[1]]]))


def test_the_same_content_twice_is_refused_as_the_flags_are_read_reading_only_files_of_equal_size(
    tmp_path, monkeypatch
):
    from chef_genius.data import fingerprint
    from chef_genius.train.config import parse_args

    a, b, other = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "other.csv"
    a.write_text("title\nsame\n")
    b.write_text("title\nsame\n")
    other.write_text("title\nanother one\n")
    with pytest.raises(UserError, match="have the same content") as err:
        parse_args(["--data", str(a), f"{b}:2"])  # before the model is loaded: nothing else has happened
    assert err.value.exit_code == 2
    read = []
    monkeypatch.setattr(fingerprint, "_known", {})
    monkeypatch.setattr(fingerprint, "file_sha256", lambda path: read.append(path) or "x")
    assert parse_args(["--data", str(a), str(other)]).data == [str(a), str(other)]
    assert read == []  # sizes differ: no byte read
