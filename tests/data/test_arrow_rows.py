"""The tokenized cache read with pyarrow alone (``ArrowRows``): the same rows and columns as
``datasets.Dataset`` reads from the same files, across parts and record batches, and after pickling
(loader workers started by spawn)."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa

from chef_genius.data.preprocess import schema
from chef_genius.data.tokenized import ArrowRows, RecipeDataset


def _part(path, rows, batch_rows):
    """An Arrow stream file of the cache's schema, ``batch_rows`` rows per record batch (nothing cut: the
    untruncated lengths are the lengths)."""
    ids = pa.list_(pa.int32())
    with pa.ipc.new_stream(str(path), schema()) as writer:
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start : start + batch_rows]
            writer.write_batch(
                pa.record_batch(
                    [
                        pa.array([s for s, _ in chunk], ids),
                        pa.array([t for _, t in chunk], ids),
                        pa.array([len(s) for s, _ in chunk], pa.int32()),
                        pa.array([len(t) for _, t in chunk], pa.int32()),
                        pa.array([len(s) for s, _ in chunk], pa.int32()),
                        pa.array([len(t) for _, t in chunk], pa.int32()),
                    ],
                    schema=schema(),
                )
            )
    return path


def _rows(n, seed):
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(3, 900, rng.integers(1, 40)).tolist(), rng.integers(3, 900, rng.integers(1, 60)).tolist())
        for _ in range(n)
    ]


def test_arrow_rows_read_what_datasets_reads(tmp_path):
    import datasets

    first, second = _rows(23, 0), _rows(17, 1)
    paths = [_part(tmp_path / "part-00000.arrow", first, 5), _part(tmp_path / "part-00001.arrow", second, 7)]
    rows = ArrowRows(paths)
    reference = datasets.concatenate_datasets([datasets.Dataset.from_file(str(p)) for p in paths])
    assert len(rows) == len(reference) == 40
    assert [rows[i] for i in range(40)] == [reference[i] for i in range(40)]
    for name in ("input_ids", "labels", "source_len", "target_len"):
        assert rows[name] == list(reference[name])
    assert rows.column("target_len").tolist() == [len(t) for _, t in first + second]
    ours, theirs = RecipeDataset(rows, [39, 0, 22, 23]), RecipeDataset(reference, [39, 0, 22, 23])
    expected = [(first + second)[i] for i in (39, 0, 22, 23)]
    assert [ours[i] for i in range(4)] == [theirs[i] for i in range(4)] == expected
    assert (ours.lengths() == theirs.lengths()).all()
    assert all((a == b).all() for a, b in zip(ours.source_target_lengths(), theirs.source_target_lengths()))


def test_arrow_rows_pickle_as_their_paths(tmp_path):
    rows = ArrowRows([_part(tmp_path / "part-00000.arrow", _rows(50, 2), 8)])
    data = pickle.dumps(RecipeDataset(rows, np.arange(50)))
    assert len(data) < 4096, "a worker started by spawn maps the files again instead of receiving their rows"
    again = pickle.loads(data)
    assert [again[i] for i in range(50)] == [RecipeDataset(rows)[i] for i in range(50)]


def test_arrow_rows_refuse_a_row_past_the_end(tmp_path):
    rows = ArrowRows([_part(tmp_path / "part-00000.arrow", _rows(3, 3), 2)])
    for bad in (3, -1):
        try:
            rows[bad]
        except IndexError:
            continue
        raise AssertionError(f"row {bad} of 3 was read")


def test_benchmark_baseline_rows_without_datasets(tmp_path, monkeypatch):
    """On the GPU machine (no ``datasets``) the Seq2SeqTrainer baseline gets the same rows in memory, with
    the source + target lengths its length-grouped sampler needs; with ``datasets``, a Dataset of them."""
    import sys

    from bench.throughput_contenders import InMemoryRows, hf_dataset

    recipes = _rows(12, 4)
    rows = ArrowRows([_part(tmp_path / "part-00000.arrow", recipes, 5)])
    picked = [7, 0, 11]
    with_datasets = hf_dataset(rows, picked)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now fails, as there
    without = hf_dataset(rows, picked)
    assert isinstance(without, InMemoryRows) and not isinstance(with_datasets, InMemoryRows)
    assert [without[i] for i in range(3)] == [{"input_ids": recipes[i][0], "labels": recipes[i][1]} for i in picked]
    assert without.lengths == list(with_datasets["length"]) == [len(recipes[i][0]) + len(recipes[i][1]) for i in picked]


def test_numeric_columns_read_as_views_equal_to_pyarrows_own(tmp_path):
    from chef_genius.data.tokenized import numpy_view

    for kind in (pa.int8(), pa.int32(), pa.int64(), pa.uint16(), pa.float32(), pa.float64()):
        column = pa.array([5, 1, 4, 2, 3], kind).slice(1, 3)  # an offset into the buffer, as batches have
        view = numpy_view(column)
        assert view.dtype == column.to_numpy().dtype and view.tolist() == column.to_numpy().tolist()
    with_nulls = pa.array([1, None, 3], pa.int32())
    assert np.isnan(numpy_view(with_nulls)[1])  # pyarrow's own conversion where a view cannot say null


def test_mapping_the_cache_imports_no_pandas(tmp_path):
    """pyarrow's ``to_numpy`` imports pandas on first use: 1.7 s of every start with a cached corpus."""
    import subprocess
    import sys

    from conftest import REPO

    _part(tmp_path / "p.arrow", _rows(50, 0), 16)
    code = (
        "import sys; from chef_genius.data.tokenized import ArrowRows, RecipeDataset; "
        f"d = RecipeDataset(ArrowRows([{str(tmp_path / 'p.arrow')!r}])); d.lengths(); d[3]; "
        "d.dataset.column('source_full_len'); assert 'pandas' not in sys.modules, 'pandas imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
