import numpy as np

from chef_genius.data import tokenized as data_mod
from chef_genius.data.tokenized import Collator, RecipeDataset, load_tokenized, split_indices
from chef_genius.model.loading import load_tokenizer


def test_tokenized_cache_is_reused_and_keyed_by_lengths(tiny_model, small_csv, tmp_path, monkeypatch):
    tok = load_tokenizer(str(tiny_model))
    first = load_tokenized(small_csv, tok, 64, 128, tmp_path)
    assert not first.from_cache and len(first.dataset) == 96
    assert first.stats["kept"] == 96

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again although the cache matches")

    monkeypatch.setattr(data_mod, "build_parts", no_tokenizing)
    second = load_tokenized(small_csv, tok, 64, 128, tmp_path)
    assert second.from_cache and second.cache_dir == first.cache_dir
    assert second.dataset["input_ids"] == first.dataset["input_ids"]
    monkeypatch.undo()
    other = load_tokenized(small_csv, tok, 32, 128, tmp_path)  # another max length: another entry
    assert not other.from_cache and other.cache_dir != first.cache_dir
    assert max(other.dataset["source_len"]) <= 32


def test_split_is_deterministic_and_disjoint():
    train, evald = split_indices(1000, 0.05, seed=3)
    again = split_indices(1000, 0.05, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(evald, again[1])
    assert len(evald) == 50 and not set(train) & set(evald) and len(train) + len(evald) == 1000
    assert not np.array_equal(evald, split_indices(1000, 0.05, seed=4)[1])
    assert len(split_indices(10, 0.0, seed=0)[1]) == 0


def test_collator_pads_to_multiple_of_8_and_shifts_labels():
    batch = Collator(pad_token_id=0, decoder_start_token_id=0)([([5, 6, 1], [7, 8, 9, 1]), ([5, 1], [7, 1])])
    assert batch["input_ids"].shape == (2, 8) and batch["labels"].shape == (2, 8)
    assert batch["attention_mask"][1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert batch["labels"][1, :3].tolist() == [7, 1, -100]
    assert batch["decoder_input_ids"][0, :5].tolist() == [0, 7, 8, 9, 0]


def test_dataset_rows_follow_the_index(tiny_model, small_csv, tmp_path):
    tok = load_tokenizer(str(tiny_model))
    ds = load_tokenized(small_csv, tok, 64, 128, tmp_path).dataset
    view = RecipeDataset(ds, [5, 2])
    assert view[0] == (ds[5]["input_ids"], ds[5]["labels"])
    assert view.lengths().tolist() == [
        ds[5]["source_len"] + ds[5]["target_len"],
        ds[2]["source_len"] + ds[2]["target_len"],
    ]
