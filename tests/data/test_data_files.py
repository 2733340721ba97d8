"""Data files as other tools write them: Windows encodings and line ends, archives, other layouts.

Every file is written here with the real codecs and archive modules, the way Excel, PowerShell 5.1,
``zip`` and ``gzip`` leave them.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import os
import zipfile

import pytest

from chef_genius.data.layouts import canonical_columns, parse_columns
from chef_genius.data.readers import ReadOptions, ReadStats, read_examples
from chef_genius.data.tokenized import cache_key
from chef_genius.errors import DataError, UserError

HEADER = ["", "title", "ingredients", "directions", "link", "source", "NER"]
ROWS = [
    [
        "0",
        "Crème brûlée",
        '["2 c. cream", "5 egg yolks"]',
        '["Bake.", "Chill."]',
        "x",
        "Gathered",
        '["cream", "egg yolks"]',
    ],
    ["1", "Tea", '["1 bag tea"]', '["Steep."]', "x", "Gathered", '["tea"]'],
    ["2", "Only", "three"],
]  # a bad row: wrong field count
EXPECTED_FIRST = {
    "source": "Write a recipe with these ingredients: cream, egg yolks",
    "target": "Title: Crème brûlée Ingredients: 2 c. cream ; 5 egg yolks Directions: 1. Bake. 2. Chill.",
}
PAIRS = [
    {
        "input": "Create a detailed recipe for Tea with step-by-step instructions.",
        "output": "Title: Tea Ingredients: 1 bag tea Directions: 1. Steep.",
    },
    {"input": "Create a detailed recipe for Crème brûlée.", "output": "Title: Crème brûlée Directions: 1. Bake."},
]


def read(path, **options):
    stats = ReadStats()
    return list(read_examples(path, stats, ReadOptions(**options))), stats


def csv_text(rows, newline="\r\n") -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator=newline).writerows(rows)
    return out.getvalue()


def jsonl_text(records, newline="\r\n") -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + newline for r in records)


# ---------------------------------------------------------------------------------------------
# encodings and line ends

ENCODINGS = {
    "utf-8 LF": lambda text: text.replace("\r\n", "\n").encode("utf-8"),
    "utf-8 CRLF": lambda text: text.encode("utf-8"),
    "utf-8 with BOM (Excel)": lambda text: text.encode("utf-8-sig"),
    "utf-16 (PowerShell 5.1 >)": lambda text: text.encode("utf-16"),  # BOM + native (LE) order
    "utf-16 LE with BOM": lambda text: codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
    "utf-16 BE with BOM": lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_csv_in_every_windows_encoding_reads_the_same(tmp_path, encoding):
    path = tmp_path / "recipes.csv"
    path.write_bytes(ENCODINGS[encoding](csv_text([HEADER[1:]] + [r[1:] for r in ROWS[:2]] + [ROWS[2]])))
    examples, stats = read(path)
    assert examples[0] == EXPECTED_FIRST and len(examples) == 2
    assert stats.rows == 3 and stats.skipped == {"wrong_field_count": 1}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_jsonl_in_every_windows_encoding_keeps_its_first_record(tmp_path, encoding):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(ENCODINGS[encoding](jsonl_text(PAIRS) + "{broken\r\n"))
    examples, stats = read(path)
    assert [e["source"] for e in examples] == [p["input"] for p in PAIRS]
    assert stats.rows == 3 and stats.skipped == {"bad_json": 1}


def test_excel_bom_does_not_hide_the_first_column(tmp_path):
    path = tmp_path / "excel.csv"  # title first, as Excel saves a sheet: the BOM sits before "title"
    path.write_bytes(csv_text([HEADER[1:4], ROWS[1][1:4]]).encode("utf-8-sig"))
    examples, _ = read(path)
    assert examples[0]["target"].startswith("Title: Tea ")


@pytest.mark.parametrize("codec, name", [("utf-16-le", "UTF-16 LE"), ("utf-16-be", "UTF-16 BE")])
def test_utf16_without_bom_is_refused_naming_the_encoding_and_the_fix(tmp_path, codec, name):
    path = tmp_path / "nobom.jsonl"
    path.write_bytes(jsonl_text(PAIRS).encode(codec))
    with pytest.raises(DataError) as err:
        read(path)
    message = str(err.value)
    assert f"looks like {name} text without a byte-order mark" in message and "save it as UTF-8" in message
    assert "iconv" in message and "\n" not in message


def test_undecodable_rows_in_utf16_are_skipped_and_counted(tmp_path):
    path = tmp_path / "broken.csv"
    text = csv_text([HEADER[1:4], ROWS[1][1:4]])
    lone_surrogate = "X".encode("utf-16-le") + b"\x00\xd8" + ",['a'],['b']\r\n".encode("utf-16-le")
    path.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le") + lone_surrogate)
    examples, stats = read(path)
    assert len(examples) == 1 and stats.skipped == {"invalid_utf8": 1}


# ---------------------------------------------------------------------------------------------
# archives and compression


def recipenlg_csv() -> bytes:
    return csv_text([HEADER] + ROWS[:2], newline="\n").encode("utf-8")


def test_recipenlg_zip_as_downloaded(tmp_path):
    path = tmp_path / "RecipeNLG_dataset.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("dataset/", "")
        archive.writestr("dataset/full_dataset.csv", recipenlg_csv())
        archive.writestr("__MACOSX/dataset/._full_dataset.csv", b"\x00\x05\x16\x07")
    examples, stats = read(path)
    assert examples[0] == EXPECTED_FIRST and stats.kept == 2


@pytest.mark.parametrize("suffix, opener", [(".csv.gz", gzip.open), (".csv.bz2", bz2.open)])
def test_compressed_csv(tmp_path, suffix, opener):
    path = tmp_path / f"recipes{suffix}"
    with opener(path, "wb") as handle:
        handle.write(recipenlg_csv())
    examples, stats = read(path)
    assert examples[0] == EXPECTED_FIRST and stats.kept == 2


def test_compressed_utf16_jsonl(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(jsonl_text(PAIRS).encode("utf-16"))
    examples, _ = read(path)
    assert [e["source"] for e in examples] == [p["input"] for p in PAIRS]


@pytest.mark.parametrize(
    "members, message",
    [
        ({"a.csv": b"x", "b.csv": b"y"}, "the zip holds 2 data files (a.csv, b.csv); unzip it"),
        ({"readme.txt": b"x"}, "the zip holds no .csv, .jsonl or .parquet file (it holds readme.txt)"),
    ],
)
def test_zip_without_exactly_one_data_file_is_refused(tmp_path, members, message):
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read(path)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("cut.csv.gz", gzip.compress(b"title,ingredients,directions\n" * 50)[:40], "damaged or cut short"),
        ("plain.csv.gz", b"title,ingredients,directions\n", "not a readable .gz file"),
        ("plain.csv.bz2", b"title,ingredients,directions\n", "not a readable .bz2 file"),
        ("fake.zip", b"PK not a zip", "not a readable zip file"),
        ("recipes.txt.gz", gzip.compress(b"x"), "unknown data format .txt"),
    ],
)
def test_broken_archives_are_one_line_data_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read(path)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# layouts: Food.com and --columns

FOODCOM_HEADER = [
    "name",
    "id",
    "minutes",
    "contributor_id",
    "submitted",
    "tags",
    "nutrition",
    "n_steps",
    "steps",
    "description",
    "ingredients",
    "n_ingredients",
]


def foodcom_rows():
    return [
        [
            "arriba   baked winter squash mexican style",
            "137739",
            "55",
            "47892",
            "2005-09-16",
            "['60-minutes-or-less', 'time-to-make']",
            "[51.5, 0.0, 13.0, 0.0, 2.0, 0.0, 4.0]",
            "3",
            "['make a choice and proceed with recipe', \"don't forget to preheat\", 'bake until tender']",
            "autumn is my favorite time of year to cook!",
            "['winter squash', 'mexican seasoning', 'honey']",
            "3",
        ],
        ["", "31490", "30", "26278", "2002-06-17", "[]", "[]", "1", "['mix']", "", "['salt']", "1"],  # no name
        ["broken steps", "1", "1", "1", "2002-06-17", "[]", "[]", "1", "['unclosed", "", "['salt']", "1"],
    ]


def write_foodcom(path):
    path.write_text(csv_text([FOODCOM_HEADER] + foodcom_rows(), newline="\n"), encoding="utf-8")
    return path


def test_foodcom_raw_recipes_is_recognised(tmp_path):
    examples, stats = read(write_foodcom(tmp_path / "RAW_recipes.csv"))
    assert examples == [
        {
            "source": "Write a recipe with these ingredients: winter squash, mexican seasoning, honey",
            "target": "Title: arriba baked winter squash mexican style Ingredients: winter squash ; "
            "mexican seasoning ; honey Directions: 1. make a choice and proceed with recipe 2. don't forget to preheat "
            "3. bake until tender",
        }
    ]
    assert stats.rows == 3 and stats.skipped == {"empty_text": 1, "unparsable_list": 1}


KAGGLE = [
    ["Title", "Ingredients", "Instructions", "Image_Name"],
    ["Tea", "['1 bag tea', 'water']", "Boil water.\nSteep the tea.", "tea.jpg"],
]


def test_unknown_layout_is_refused_with_the_columns_line_that_maps_it(tmp_path):
    path = tmp_path / "kaggle.csv"
    path.write_text(csv_text(KAGGLE), encoding="utf-8")
    with pytest.raises(DataError) as err:
        read(path)
    message = str(err.value)
    assert "found Title, Ingredients, Instructions, Image_Name" in message
    assert message.endswith("map yours with --columns title=Title,ingredients=Ingredients,directions=Instructions")
    examples, _ = read(path, columns="directions=Instructions")  # title / ingredients: their own names
    assert examples[0]["target"] == (
        "Title: Tea Ingredients: 1 bag tea ; water Directions: 1. Boil water. 2. Steep the tea."
    )


def test_columns_map_pairs_and_name_a_missing_column(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(jsonl_text([{"prompt": "Make tea.", "completion": "Title: Tea", "id": 1}]), encoding="utf-8")
    examples, _ = read(path, columns="input=prompt,output=completion")
    assert examples == [{"source": "Make tea.", "target": "Title: Tea"}]
    with pytest.raises(
        DataError, match="maps output to answer, which the file does not have .found prompt, completion, id."
    ):
        read(path, columns="input=prompt,output=answer")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("title", "write FIELD=COLUMN pairs"),
        ("titel=name", "unknown field 'titel'; the fields are title, ingredients, directions, ner, input, output"),
        ("title=a,title=b", "title is mapped twice"),
        ("title=name,input=prompt", "either input/output pairs or recipe fields"),
    ],
)
def test_malformed_columns_flag_is_a_usage_error(spec, message):
    with pytest.raises(UserError, match=message) as err:
        parse_columns(spec)
    assert not isinstance(err.value, DataError)


def test_columns_have_one_spelling():
    assert canonical_columns(" directions = steps , TITLE=name") == "title=name,directions=steps"
    assert canonical_columns("") is None


# ---------------------------------------------------------------------------------------------
# the tokenized cache key


def test_cache_key_follows_content_mapping_and_template(tmp_path, tiny_model):
    from chef_genius.model.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    path = write_foodcom(tmp_path / "RAW_recipes.csv")

    def key(**options):
        return cache_key(path, tokenizer, 64, 128, ReadOptions(**options))

    base = key()
    assert key() == base
    assert key(columns="title=description") != base
    assert key(source_template="Cook {title} with {ingredients}") != base
    # the same size and modification time, other content (a copy that kept the time stamp)
    stat = path.stat()
    data = bytearray(path.read_bytes())
    at = data.index(b"honey")
    data[at : at + 5] = b"HONEY"
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert key() != base


# ---------------------------------------------------------------------------------------------
# through the trainer


def test_training_on_a_zipped_foodcom_file(tiny_model, small_csv, cache_dir, tmp_path, caplog):
    """RAW_recipes.csv in a zip, made from the sample recipes, trains; its bad row is counted."""
    import ast
    import logging
    from conftest import run_training, train_args

    caplog.set_level(logging.INFO)
    with open(small_csv, encoding="utf-8", newline="") as handle:
        sample = list(csv.DictReader(handle))
    rows = [
        [
            r["title"],
            str(i),
            "10",
            "1",
            "2005-09-16",
            "[]",
            "[]",
            "1",
            repr(ast.literal_eval(r["directions"])),
            "",
            repr(json.loads(r["NER"])),
            "1",
        ]
        for i, r in enumerate(sample)
    ]
    rows.append(["no steps", "0", "1", "1", "2005-09-16", "[]", "[]", "0", "[]", "", "['salt']", "1"])
    path = tmp_path / "food-com.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("RAW_recipes.csv", csv_text([FOODCOM_HEADER] + rows).encode("utf-8-sig"))
    out = tmp_path / "run"
    assert (
        run_training(
            *train_args(
                tiny_model,
                path,
                out,
                cache_dir,
                "--max-steps",
                "1",
                "--save-steps",
                "1",
                "--max-source-length",
                "32",
                "--max-target-length",
                "64",
            )
        )
        == 0
    )
    assert "96 of 97 rows used; skipped empty_text 1" in caplog.text


def test_streaming_counts_rows_with_the_columns_mapping(tmp_path):
    from chef_genius.data.streaming import count_rows

    path = tmp_path / "kaggle.csv"
    path.write_text(csv_text(KAGGLE + [["Soup", "['water']", "Boil.", "soup.jpg"]]), encoding="utf-8")
    with pytest.raises(DataError, match="--columns title=Title"):
        count_rows(path, tmp_path / "cache")
    assert count_rows(path, tmp_path / "cache", ReadOptions(columns="directions=Instructions")) == 2


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_excel_semicolon_and_tab_exports(tmp_path, delimiter):
    """Excel in a locale with a decimal comma saves "CSV" with semicolons (here with BOM and CRLF)."""
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows([HEADER[1:4], ROWS[0][1:4]])
    path = tmp_path / "excel.csv"
    path.write_bytes(out.getvalue().encode("utf-8-sig"))
    examples, _ = read(path)
    assert examples[0]["target"] == EXPECTED_FIRST["target"]


def test_json_array_and_zipped_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    array = tmp_path / "pairs.json"
    array.write_bytes(("\r\n" + json.dumps(PAIRS, indent=1).replace("\n", "\r\n")).encode("utf-16"))
    assert [e["source"] for e in read(array)[0]] == [p["input"] for p in PAIRS]
    table = tmp_path / "RAW_recipes.parquet"
    pq.write_table(pa.table({"name": ["Toast"], "ingredients": [["bread"]], "steps": [["Toast it."]]}), table)
    archive = tmp_path / "foodcom.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(table, "RAW_recipes.parquet")
    assert read(archive)[0] == [
        {
            "source": "Write a recipe with these ingredients: bread",
            "target": "Title: Toast Ingredients: bread Directions: 1. Toast it.",
        }
    ]
