import json

import pytest

from chef_genius.errors import DataError
from chef_genius.data.readers import ReadStats, read_examples

HEADER = ",title,ingredients,directions,link,source,NER\n"


def read(path):
    stats = ReadStats()
    return list(read_examples(path, stats)), stats


def test_bundled_sample_reads_completely(sample_csv):
    examples, stats = read(sample_csv)
    assert stats.rows == 400 and stats.kept == 400 and not stats.skipped
    assert examples[0]["source"].startswith("Write a recipe with these ingredients:")
    assert examples[0]["target"].startswith("Title: ")


def test_recipenlg_csv_bad_rows_are_skipped_and_counted(tmp_path):
    path = tmp_path / "r.csv"
    good = '0,Tea,"[""1 bag tea""]","[""Steep.""]",x,Gathered,"[""tea""]"\n'
    rows = [
        good,
        '1,,"[""a""]","[""b""]",x,Gathered,"[""a""]"\n',  # empty title
        '2,Soup,"[not a list","[""b""]",x,Gathered,"[""a""]"\n',  # unparsable list
        "3,Only three,fields\n",  # wrong field count
    ]
    data = (HEADER + "".join(rows)).encode("utf-8") + b'4,Caf\xe9,"[""x""]","[""y""]",x,G,"[""x""]"\n'
    path.write_bytes(data)
    examples, stats = read(path)
    assert len(examples) == 1 and stats.rows == 5
    assert stats.skipped == {"empty_text": 1, "unparsable_list": 1, "wrong_field_count": 1, "invalid_utf8": 1}


def test_jsonl_pairs_and_plain_records(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [
        json.dumps({"input": "eggs, milk", "output": "Scramble\nthem.", "id": 7}),
        json.dumps({"title": "Toast", "ingredients": ["bread"], "directions": "Toast it."}),
        "{broken json",
        json.dumps({"input": "", "output": "x"}),
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"input": "caf\xe9", "output": "x"}\n')
    examples, stats = read(path)
    assert examples[0] == {"source": "eggs, milk", "target": "Scramble them."}
    assert examples[1]["target"] == "Title: Toast Ingredients: bread Directions: 1. Toast it."
    assert stats.skipped == {"bad_json": 1, "empty_text": 1, "invalid_utf8": 1}


def test_parquet_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "r.parquet"
    pq.write_table(
        pa.table({"title": ["Toast", None], "ingredients": [["bread"], ["x"]], "directions": [["Toast it."], ["y"]]}),
        path,
    )
    examples, stats = read(path)
    assert len(examples) == 1 and stats.skipped == {"missing_field": 1}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.csv", b"", "empty"),
        ("cols.csv", b"a,b\n1,2\n", "expected columns"),
        ("junk.jsonl", bytes(range(256)) * 40, "not a JSON Lines"),
        ("junk.parquet", b"PAR1 not really", "not a readable Parquet"),
        ("recipes.txt", b"hello", "unknown data format"),
    ],
)
def test_files_that_are_not_recipe_files_raise_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read(path)
    assert "\n" not in str(err.value)
