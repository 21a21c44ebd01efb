"""Parquet datasets: the chunked series layout, written and read back without Ray."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raybench import data
from raybench.data import parquet
from raybench.data.__main__ import main as data_main
from raybench.errors import UserError


def test_chunks_never_cross_series_or_splits_and_train_keeps_full_chunks_only():
    chunks = parquet.plan_chunks([110, 70], window=10, chunk=16, valid_ratio=0.1,
                                 test_ratio=0.2)
    # 100 + 60 windows: test is the last 32, valid the last 13 of the first 128
    valid_start, test_start = parquet.split_bounds(160, 0.1, 0.2)
    assert (valid_start, test_start) == (115, 128)
    train = [c for c in chunks if c.split == "train"]
    assert all(c.windows == 16 for c in train)
    # series 0: six full chunks, its last 4 train windows dropped; series 1 has only 15 train
    # windows (global 100-114): no full chunk
    assert {(c.series, c.start) for c in train} == {(0, s) for s in range(0, 96, 16)}
    assert [(c.series, c.start, c.windows) for c in chunks if c.split == "valid"] == [(1, 15, 13)]
    for c in chunks:
        assert c.start + c.windows <= (100 if c.series == 0 else 60)
    assert sum(c.windows for c in chunks if c.split == "test") == 32


def test_written_windows_equal_the_npz_windows_and_stats_cover_train_once(tmp_path):
    prices = 100 + np.cumsum(np.random.default_rng(0).normal(size=500))
    meta = parquet.write_dataset(iter([prices]), [500], task="regression", window=20,
                                 out=tmp_path / "d", shards=3, chunk=32, valid_ratio=0.1,
                                 test_ratio=0.2, source="test")
    X, y = data.window_series(prices, 20, "regression")  # the NPZ path's windows
    n_test = int(round(len(X) * 0.2))
    valid_start = (len(X) - n_test) - int(round((len(X) - n_test) * 0.1))
    Xt, yt = parquet.read_split(meta, "test")
    assert np.allclose(Xt, X[-n_test:]) and np.allclose(yt, y[-n_test:])
    Xv, _ = parquet.read_split(meta, "valid")
    assert np.allclose(Xv, X[valid_start:len(X) - n_test])
    Xtr, _ = parquet.read_split(meta, "train")
    kept = valid_start // 32 * 32  # full chunks only
    assert meta.splits["train"].dropped_windows == valid_start - kept
    assert np.allclose(Xtr, X[:kept])
    # statistics over the train windows' values, each value once
    span = prices[:kept + 19]
    assert meta.norm_stats["mu"][0] == pytest.approx(span.mean())
    assert meta.norm_stats["sd"][0] == pytest.approx(span.std())
    assert meta.norm_stats["y_mu"] == pytest.approx(y[:kept].mean())
    assert len(meta.splits["train"].files) == 3
    doc = json.loads((tmp_path / "d" / parquet.META).read_text())
    assert doc["schema_version"] == 2 and doc["window"] == 20 and "path" not in doc


def test_memory_load_normalises_like_the_metadata_says(tmp_path):
    meta = data.sources.prepare_parquet("synthetic", "classification", 10, 0.2, tmp_path / "c",
                                        shards=2, chunk_windows=8, valid_ratio=0.1,
                                        samples=3000, seed=4)
    ds = parquet.load_memory(parquet.load_meta(tmp_path / "c"))
    assert ds.task == "classification" and set(np.unique(ds.y_train)) <= {0.0, 1.0}
    assert len(ds.X_train) == meta.splits["train"].windows
    assert len(ds.X_test) == meta.splits["test"].windows
    assert np.all(ds.baseline_test == meta.majority)
    raw = ds.X_valid * np.float32(meta.norm_stats["sd"][0]) + np.float32(meta.norm_stats["mu"][0])
    assert raw.min() > 0  # prices, back from z-scores


def test_whole_window_layout_is_chunks_of_one(tmp_path):
    meta = data.sources.prepare_parquet("synthetic", "regression", 10, 0.2, tmp_path / "w",
                                        shards=1, chunk_windows=1, valid_ratio=0.1,
                                        samples=500, seed=1)
    assert meta.row_values == 10 and meta.splits["train"].dropped_windows == 0
    chunked = data.sources.prepare_parquet("synthetic", "regression", 10, 0.2, tmp_path / "s",
                                           shards=1, chunk_windows=50, valid_ratio=0.1,
                                           samples=500, seed=1)
    a, b = parquet.read_split(meta, "test"), parquet.read_split(chunked, "test")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_compression_is_a_choice_and_reads_back_the_same(tmp_path):
    metas = {c: data.sources.prepare_parquet("synthetic", "regression", 10, 0.2, tmp_path / c,
                                             shards=1, chunk_windows=1, valid_ratio=0.1,
                                             samples=500, seed=1, compression=c)
             for c in ("none", "snappy")}
    for c, meta in metas.items():
        f = Path(meta.path) / meta.splits["train"].files[0]
        written = pq.ParquetFile(f).metadata.row_group(0).column(0).compression
        assert written == {"none": "UNCOMPRESSED", "snappy": "SNAPPY"}[c]
    a, b = (parquet.read_split(m, "train") for m in metas.values())
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def prepared(tmp_path, name="ok"):
    data_main(["prepare", "--source", "synthetic", "--samples", "2000", "--window", "10",
               "--format", "parquet", "--shards", "2", "--chunk-windows", "16", "--out",
               str(tmp_path / name)])
    return tmp_path / name


def test_prepare_cli_writes_a_dataset(tmp_path, capsys):
    d = prepared(tmp_path)
    assert "chunks of 16" in capsys.readouterr().out
    assert len(list((d / "train").glob("*.parquet"))) == 2
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        prepared(tmp_path)


def test_bad_datasets_fail_in_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"not a raybench Parquet dataset \(no Parquet files\)"):
        parquet.load_meta(empty)
    d = prepared(tmp_path)
    shard = d / "train" / "part-00001.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.drop_columns(["n"]), shard)
    with pytest.raises(UserError, match="has no column 'n'"):
        parquet.load_meta(d)
    pq.write_table(table.replace_schema_metadata({b"raybench.features": b"3"}), shard)
    with pytest.raises(UserError, match="3 feature.* but the dataset has 1"):
        parquet.load_meta(d)
    (d / parquet.META).unlink()
    with pytest.raises(UserError, match="Parquet files but no raybench_dataset.json"):
        parquet.load_meta(d)
    with pytest.raises(UserError, match="a series of 500 values is too short for windows of 600"):
        parquet.plan_chunks([500], 600, 8, 0.1, 0.2)
    assert isinstance(table.schema.field("x").type, pa.FixedSizeListType)


def test_the_collate_cuts_the_same_windows_as_memory_bit_for_bit(tmp_path):
    """What Ray Data's prefetch threads hand the training thread (WindowCollate over the train
    split's rows) is exactly the in-memory path's training windows and targets."""
    import torch

    from raybench.data.ingest import RayDataIngest, WindowCollate, batches_of

    prices = 100 + np.cumsum(np.random.default_rng(1).normal(size=900))
    meta = parquet.write_dataset(iter([prices]), [900], task="regression", window=20,
                                 out=tmp_path / "d", shards=2, chunk=32, valid_ratio=0.1,
                                 test_ratio=0.2, source="test")
    memory = parquet.load_memory(meta)

    class Session:
        rank, world_size = 0, 1

    ingest = RayDataIngest(meta, Session(), batch=50, device=torch.device("cpu"))
    table = pq.read_table(meta.files("train")[0])
    for path in meta.files("train")[1:]:
        table = pa.concat_tables([table, pq.read_table(path)])
    X, Y = WindowCollate(ingest, epoch=1)(table)
    assert torch.equal(X, torch.from_numpy(memory.X_train[:len(X)]))
    assert torch.equal(Y, torch.from_numpy(memory.y_train[:len(Y)]))
    assert X.is_contiguous() and len(X) == ingest.n_local
    # sliced into batches across fetches of uneven size: the same windows, in order
    fetches = [(X[:70], Y[:70]), (X[70:75], Y[70:75]), (X[75:], Y[75:])]
    batches = list(batches_of(iter(fetches), 50))
    assert [len(b[0]) for b in batches[:-1]] == [50] * (len(X) // 50)
    assert torch.equal(torch.cat([b[0] for b in batches]), X)
    assert torch.equal(torch.cat([b[1] for b in batches]), Y)


def test_a_fetch_holds_whole_batches_where_it_costs_little():
    from raybench.data.ingest import rows_per_fetch

    big = 4 * 256 * 32  # a window of 256 steps of 32 features: 32 KiB
    assert rows_per_fetch(1024, 256, big) == 16  # 4096 windows: four whole batches
    assert rows_per_fetch(64, 256, big) == 1
    assert rows_per_fetch(96, 256, big) == 3  # 768 windows: eight whole batches
    assert rows_per_fetch(1000, 256, big) == 16  # a whole-batch fetch would take 125 rows


def test_a_fetch_of_small_windows_holds_about_fetch_bytes_so_its_fixed_cost_is_shared():
    from raybench.data.ingest import FETCH_BYTES, rows_per_fetch

    small = 4 * 60  # the seed's window: 60 steps of one feature
    rows = rows_per_fetch(1024, 256, small)
    assert rows == 136  # 34,816 windows, 34 whole batches (137 rows would split one)
    assert abs(rows * 256 * small - FETCH_BYTES) <= 4 * 256 * small
    assert rows_per_fetch(1024, 1, small) == 34 * 1024  # one window a row: whole batches too


def test_a_cut_or_damaged_shard_is_refused_before_any_worker(tmp_path):
    prices = 100 + np.cumsum(np.random.default_rng(2).normal(size=600))
    meta = parquet.write_dataset(iter([prices]), [600], task="regression", window=20,
                                 out=tmp_path / "d", shards=2, chunk=16, valid_ratio=0.1,
                                 test_ratio=0.2, source="test")
    shard = Path(meta.files("train")[1])
    whole = shard.read_bytes()
    shard.write_bytes(whole[: len(whole) // 2])  # cut short: no footer
    with pytest.raises(UserError, match=f"{shard}: not a readable Parquet file"):
        parquet.load_meta(meta.path)
    # a shard replaced by a valid file with fewer rows: the row count gives it away
    table = pq.read_table(meta.files("train")[0])
    pq.write_table(table.slice(0, 1).replace_schema_metadata(table.schema.metadata), shard)
    with pytest.raises(UserError, match="cut short or replaced"):
        parquet.load_meta(meta.path)
