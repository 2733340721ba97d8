"""Parallel preprocessing gives the one-pass reader's rows and the tokenizer's ids, exactly."""

import csv
import json
import logging

import pytest

from chef_genius.data import preprocess
from chef_genius.data.csv_ranges import plan_csv
from chef_genius.data.encode import Encoder
from chef_genius.data.readers import ReadOptions, ReadStats, read_examples
from chef_genius.data.tokenized import CACHE_META, load_tokenized
from chef_genius.model.loading import load_tokenizer
from chef_genius.monitoring import progress as progress_mod

HEADER = ["", "title", "ingredients", "directions", "link", "source", "NER"]


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(str(tiny_model))


def reference(path, tok, src_len=64, tgt_len=128, options=ReadOptions()):
    """What the cache must hold: the one-pass reader's examples through the tokenizer itself."""
    stats = ReadStats()
    rows = list(read_examples(path, stats, options))
    sources = tok([r["source"] for r in rows], max_length=src_len, truncation=True)["input_ids"]
    targets = tok(text_target=[r["target"] for r in rows], max_length=tgt_len, truncation=True)["input_ids"]
    return stats.to_dict(), sources, targets


def assert_same(result, expected):
    stats, sources, targets = expected
    assert result.stats == stats
    assert result.dataset["input_ids"] == sources and result.dataset["labels"] == targets
    assert result.dataset["source_len"] == [len(s) for s in sources]
    assert result.dataset["target_len"] == [len(t) for t in targets]


def parts_of(result) -> list:
    return json.loads((result.cache_dir / CACHE_META).read_text())["parts"]


@pytest.fixture
def small_ranges(monkeypatch):
    """Ranges of 16 KiB, so a file of a few hundred KiB is cut into many."""
    monkeypatch.setattr(preprocess, "RANGE_BYTES", 16 << 10)


def bad_rows_csv(path, crlf=False, stray_quote=False):
    """Recipes with quoted newlines, plus rows of every kind the reader skips."""
    rows = []
    for i in range(600):
        title = f"Stew\n{i}" if i % 37 else ""  # empty title: empty_text
        ingredients = json.dumps([f"{i % 9} cups water", "salt, pepper", "½ tsp. thyme"])
        directions = f'Boil {i} minutes.\nStir "well".\r\nServe  hot ; enjoy'  # one step a line
        if i % 53 == 0:
            directions = "[not, a list"  # unparsable_list
        rows.append([str(i), title, ingredients, directions, "x.com", "Gathered", "[]"])
    newline = "\r\n" if crlf else "\n"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator=newline)
        writer.writerow(HEADER)
        for i, row in enumerate(rows):
            writer.writerow(row)
            if i % 71 == 5:
                handle.write(f"{i},too,few{newline}")  # wrong_field_count
            if i % 97 == 7:
                handle.write(newline)  # a blank line
            if stray_quote and i == 300:
                handle.write(f'{i},5" pan,"[""a""]","[""b""]",x,y,[]{newline}')  # a quote in an unquoted field
    with open(path, "ab") as handle:  # undecodable bytes: invalid_utf8
        handle.write(b'9999,Bad \xff title,"[""a""]","[""b""]",x,y,[]' + newline.encode())
    return path


def test_parallel_equals_one_pass_on_the_sample(tok, sample_csv, tmp_path, small_ranges):
    result = load_tokenized(sample_csv, tok, 64, 128, tmp_path, num_proc=2)
    assert len(parts_of(result)) > 4  # really cut and run on two workers
    assert_same(result, reference(sample_csv, tok))
    single = load_tokenized(sample_csv, tok, 64, 128, tmp_path / "one", num_proc=1)
    assert len(parts_of(single)) == 1
    assert_same(single, reference(sample_csv, tok))


@pytest.mark.parametrize("crlf", [False, True])
def test_parallel_equals_one_pass_with_bad_rows(tok, tmp_path, small_ranges, crlf):
    path = bad_rows_csv(tmp_path / "bad.csv", crlf=crlf)
    expected = reference(path, tok)
    assert set(expected[0]["skipped"]) == {"empty_text", "unparsable_list", "wrong_field_count", "invalid_utf8"}
    result = load_tokenized(path, tok, 64, 128, tmp_path / "cache", num_proc=2)
    assert len(parts_of(result)) > 4
    assert_same(result, expected)


def test_a_cut_inside_a_field_falls_back_to_one_pass(tok, tmp_path, monkeypatch, caplog):
    path = bad_rows_csv(tmp_path / "stray.csv", stray_quote=True)
    plan = plan_csv(path, ReadOptions(), 16)
    assert plan is not None  # the quote count misplaces the cuts after the stray quote...
    monkeypatch.setattr(preprocess, "RANGE_BYTES", 16 << 10)
    with caplog.at_level(logging.INFO, logger="chef_genius"):
        result = load_tokenized(path, tok, 64, 128, tmp_path / "cache", num_proc=2)
    assert "one pass" in caplog.text  # ...which the range readers notice
    assert parts_of(result) == ["part-00000.arrow"]
    assert_same(result, reference(path, tok))


def test_files_that_cannot_be_cut_are_read_in_one_pass(tok, sample_csv, tmp_path, small_ranges):
    lone_cr = tmp_path / "mac.csv"
    lone_cr.write_bytes(sample_csv.read_bytes().replace(b"\n", b"\r"))
    assert plan_csv(lone_cr, ReadOptions(), 8) is None
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes(sample_csv.read_text(encoding="utf-8").encode("utf-16"))
    assert plan_csv(utf16, ReadOptions(), 8) is None
    for path in (lone_cr, utf16):
        result = load_tokenized(path, tok, 64, 128, tmp_path / path.stem, num_proc=2)
        assert_same(result, reference(path, tok))


def test_jsonl_is_tokenized_by_the_workers_in_order(tok, sample_csv, tmp_path, monkeypatch, small_ranges):
    path = tmp_path / "pairs.jsonl"
    rows = list(read_examples(sample_csv, ReadStats()))
    with open(path, "w", encoding="utf-8") as handle:
        for i, row in enumerate(rows):
            handle.write(json.dumps({"input": row["source"], "output": row["target"]}) + "\n")
            if i % 50 == 3:
                handle.write("{broken\n")
    monkeypatch.setattr(preprocess, "BATCH_ROWS", 16)  # many batches in flight on the workers
    pooled = []
    real = preprocess._write_part_pooled
    monkeypatch.setattr(preprocess, "_write_part_pooled", lambda *a: pooled.append(a[-1]) or real(*a))
    result = load_tokenized(path, tok, 64, 128, tmp_path / "cache", num_proc=2)
    assert pooled == [2]
    assert result.stats["skipped"] == {"bad_json": len(range(3, len(rows), 50))}
    assert_same(result, reference(path, tok))


def test_the_cache_is_reused_without_reading_the_file(tok, sample_csv, tmp_path, small_ranges, monkeypatch):
    first = load_tokenized(sample_csv, tok, 64, 128, tmp_path, num_proc=2)
    monkeypatch.setattr(
        "chef_genius.data.tokenized.build_parts",
        lambda *a, **k: pytest.fail("tokenized again although the cache matches"),
    )
    second = load_tokenized(sample_csv, tok, 64, 128, tmp_path, num_proc=2)
    assert second.from_cache and second.stats == first.stats
    assert second.dataset["labels"] == first.dataset["labels"]


def test_progress_lines_without_a_terminal(tok, sample_csv, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(progress_mod, "LINE_SECONDS", 0.0)
    monkeypatch.setattr(preprocess, "BATCH_ROWS", 100)
    with caplog.at_level(logging.INFO, logger="chef_genius"):
        load_tokenized(sample_csv, tok, 64, 128, tmp_path, num_proc=1, progress="log")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tokenizing sample_recipes.csv")]
    assert lines and all("rows/s" in line for line in lines)
    assert lines[0].startswith("tokenizing sample_recipes.csv: 100 rows")


def test_count_progress_line_with_rate_and_eta_on_a_fake_clock(caplog):
    now = [0.0]
    with caplog.at_level(logging.INFO, logger="chef_genius"):
        with progress_mod.CountProgress(
            "tokenizing x.csv", 100, mode="log", unit="MB", plural="MB", clock=lambda: now[0]
        ) as shown:
            now[0] = 10.0
            shown.update(20)  # under 30 s since the start: no line
            now[0] = 31.0
            shown.update(31)
        with progress_mod.CountProgress("reading", None, mode="log", unit="row", clock=lambda: now[0]) as counted:
            now[0] = 71.0
            counted.update(800)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "tokenizing x.csv: 31/100 MB, 1.00 MB/s, elapsed 00:31, ETA 01:09",
        "reading: 800 rows, 20.00 rows/s, elapsed 00:40",
    ]


HOSTILE = [
    "a  b",
    " a",
    "a ",
    "x\u00a0y",
    "caf\u00e9 cafe\u0301",
    "a \u0301b",
    "</s> x",
    "x</s>y",
    "<pad>",
    "\u2581a b",
    "tab\tin",
    "new\nline",
    "\ufb01ne \ufb02our",
    "\u00bd cup",
    "\u216b",
    "",
    " ",
    "a" * 3000,
    " ".join(["word"] * 600),
    "Title: Stew Ingredients: 1 cup water ; salt",
]


def variant(tok, tmp_path, name, edit):
    """The tiny tokenizer with its tokenizer.json edited (another pipeline of the same vocabulary)."""
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tok.backend_tokenizer.to_str())
    edit(spec)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


@pytest.mark.parametrize("pipeline", ["tiny", "whitespace_split", "lowercase", "byte_level"])
def test_encoder_ids_are_the_tokenizers(tok, sample_csv, tmp_path, pipeline):
    edits = {
        "tiny": None,
        "whitespace_split": lambda s: s.update(
            pre_tokenizer={"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, s["pre_tokenizer"]]}
        ),
        "lowercase": lambda s: s.update(normalizer={"type": "Lowercase"}),  # checked on every text
        "byte_level": lambda s: s.update(
            pre_tokenizer={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        ),
    }
    tokenizer = tok if edits[pipeline] is None else variant(tok, tmp_path, pipeline, edits[pipeline])
    rows = list(read_examples(sample_csv, ReadStats()))[:200]
    texts = HOSTILE + [r["source"] for r in rows] + [r["target"] for r in rows] + [t.upper() for t in HOSTILE]
    for max_length in (3, 16, 512):
        source, target = Encoder(tokenizer, max_length), Encoder(tokenizer, max_length, target=True)
        assert source.fast == (pipeline != "byte_level")
        expected = tokenizer(texts, max_length=max_length, truncation=True)["input_ids"]
        assert source(texts) == expected and source(texts) == expected  # cold and warm cache
        assert target(texts) == tokenizer(text_target=texts, max_length=max_length, truncation=True)["input_ids"]
