import numpy as np
import pytest

from raybench import data
from raybench.data import __main__ as data_cli
from raybench.errors import UserError
from tests.conftest import write_npz

rng = np.random.default_rng(0)
F32 = np.float32


@pytest.mark.parametrize("overrides, message", [
    ({"y_test": None}, "missing key 'y_test'"),
    ({"X_train": rng.normal(size=(100, 10)).astype(F32)}, "X_train must be 3-D"),
    ({"y_train": rng.integers(0, 2, (100, 1))}, "y_train must be 1-D"),
    ({"y_train": rng.integers(0, 2, 99)}, "X_train has 100 samples but y_train has 99"),
    ({"X_test": rng.normal(size=(30, 12, 1)).astype(F32)}, "T and F must match"),
    ({"X_test": rng.normal(size=(30, 10, 2)).astype(F32)}, "T and F must match"),
    ({"X_train": np.full((100, 10, 1), np.nan, F32)}, "X_train contains NaN or inf"),
    ({"X_test": np.full((30, 10, 1), np.inf, F32)}, "X_test contains NaN or inf"),
    ({"y_train": rng.integers(0, 3, 100)}, "outside {0, 1}"),
    ({"X_train": np.zeros((0, 10, 1), F32), "y_train": np.zeros(0, int)}, "X_train is empty"),
])
def test_bad_npz_is_rejected_in_one_line(tmp_path, overrides, message):
    path = write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(UserError) as err:
        arrays = data.load_npz(path)
        data.infer_task(arrays["y_train"], arrays["y_test"], None)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_and_non_npz_files(tmp_path):
    with pytest.raises(UserError, match="NPZ file not found"):
        data.load_npz(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(UserError, match="not an NPZ file"):
        data.load_npz(junk)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, X_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1),
             X_test=np.zeros((1, 1, 1), F32), y_test=np.zeros(1))
    with pytest.raises(UserError, match="pickle"):
        data.load_npz(path)


def test_task_inference_and_contradictions():
    ints, floats = np.array([0, 1, 1]), np.array([0.3, 1.2, 2.0], F32)
    assert data.infer_task(ints, ints, None) == "classification"
    assert data.infer_task(floats, floats, None) == "regression"
    with pytest.raises(UserError, match="task is regression but y holds integer"):
        data.infer_task(ints, ints, "regression")
    with pytest.raises(UserError, match="task is classification but y is float32"):
        data.infer_task(floats, floats, "classification")


def test_windows_and_targets():
    prices = np.array([1.0, 2.0, 3.0, 2.5, 4.0])
    X, y = data.window_series(prices, 2, "regression")
    assert X[:, :, 0].tolist() == [[1, 2], [2, 3], [3, 2.5]]
    assert y.tolist() == [3.0, 2.5, 4.0]
    _, direction = data.window_series(prices, 2, "classification")
    assert direction.tolist() == [1, 0, 1]  # next close above the window's last close


def test_chronological_splits_and_train_only_normalization():
    n = 200
    X = np.arange(n * 4, dtype=F32).reshape(n, 4, 1)
    y = np.arange(n, dtype=F32)
    arrays = data.split_test(X, y, 0.2)
    assert arrays["y_test"][0] == 160 and arrays["y_train"][-1] == 159
    ds = data.build_dataset(arrays, None, 0.1, "zscore")
    # validation is the chronological tail of train: 144 train, 16 valid
    assert len(ds.X_train) == 144 and len(ds.X_valid) == 16
    train_raw = X[:144]
    assert ds.norm_stats["mu"][0] == pytest.approx(train_raw.mean())
    assert ds.norm_stats["sd"][0] == pytest.approx(train_raw.std(), rel=1e-5)
    assert ds.norm_stats["y_mu"] == pytest.approx(y[:144].mean())
    # train is standardized exactly; later splits are not (no stats leaked from them)
    assert ds.X_train.mean() == pytest.approx(0, abs=1e-4)
    assert ds.X_test.mean() > 2
    # persistence baseline: the window's last raw value, in the normalized target units
    expected = (X[144:160, -1, 0] - ds.norm_stats["y_mu"]) / ds.norm_stats["y_sd"]
    assert np.allclose(ds.baseline_valid, expected, atol=1e-5)


def test_norm_none_and_majority_baseline(tmp_path):
    arrays = data.load_npz(write_npz(tmp_path / "ok.npz",
                                     y_train=np.array([1] * 70 + [0] * 30)))
    ds = data.build_dataset(arrays, None, 0.1, "none")
    assert ds.norm_stats == {"mu": [0.0], "sd": [1.0]}
    assert ds.task == "classification" and set(ds.baseline_test.tolist()) == {1.0}
    assert np.array_equal(ds.X_train, arrays["X_train"][:90])


def test_empty_validation_and_small_shards():
    with pytest.raises(UserError, match="empty validation split"):
        data.split_valid(5, 0.05)
    with pytest.raises(UserError, match="fewer than batch_size 64"):
        data.check_batches(100, 2, 64)
    data.check_batches(128, 2, 64)


def test_synthetic_is_deterministic_and_chunked():
    a = data.synthetic(6000, 30, "regression", seed=3, test_ratio=0.2)
    b = data.synthetic(6000, 30, "regression", seed=3, test_ratio=0.2)
    assert a["X_train"].shape == (4800, 30, 1) and a["X_test"].shape == (1200, 30, 1)
    assert np.array_equal(a["X_train"], b["X_train"])
    # more samples than one GBM path: windows continue on fresh paths, prices stay sane
    assert a["X_train"].dtype == np.float32 and np.isfinite(a["X_train"]).all()
    assert a["X_train"].max() < 1e4 and a["X_train"].min() > 0
    c = data.synthetic(3000, 30, "classification", seed=3, test_ratio=0.2)
    assert set(np.unique(c["y_train"])) <= {0, 1}


def test_prepare_from_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    prices = 100 + np.cumsum(np.random.default_rng(1).normal(size=300))
    csv = tmp_path / "p.csv"
    csv.write_text("Date,Close\n" + "".join(f"d{i},{p}\n" for i, p in enumerate(prices)))
    pq.write_table(pa.table({"Close": prices}), tmp_path / "p.parquet")
    for src in (csv, tmp_path / "p.parquet"):
        out = data.prepare("csv", "regression", 20, 0.2, tmp_path / f"{src.suffix}.npz",
                           path=str(src))
        arrays = data.load_npz(out)
        assert arrays["X_train"].shape == (224, 20, 1)
        assert arrays["X_train"][0, :, 0] == pytest.approx(prices[:20].astype(F32))
    with pytest.raises(UserError, match="no column 'Price'"):
        data.prepare("csv", "regression", 20, 0.2, tmp_path / "x.npz", path=str(csv),
                     column="Price")


def test_sp500_source_is_real_and_offline(tmp_path):
    out = data.prepare("sp500", "classification", 60, 0.2, tmp_path / "sp.npz")
    arrays = data.load_npz(out)
    n = len(arrays["X_train"]) + len(arrays["X_test"])
    assert n == 5031 - 60  # trading days 1999-2018 in arch, less one window
    assert len(arrays["X_test"]) == round(n * 0.2)
    assert 0.45 < arrays["y_train"].mean() < 0.6  # up days: a bit over half


def test_data_cli(tmp_path, capsys):
    assert data_cli.main(["prepare", "--source", "synthetic", "--samples", "500", "--task",
                      "classification", "--window", "10", "--out", str(tmp_path / "s.npz")]) == 0
    assert "X_train (400, 10, 1)" in capsys.readouterr().out
