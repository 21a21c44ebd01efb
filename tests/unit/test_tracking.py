"""Trackers never block training or hide: unreachable servers are named at once, and MLflow's
calls run off the training thread into the one run raybench opened."""

import threading
import time

import pytest

from raybench.tracking import Tracker, TrackingOptions, check_mlflow


@pytest.mark.parametrize("uri, message", [
    ("http://127.0.0.1:1", "nothing answers at 127.0.0.1:1"),
    ("foo://nowhere", "unknown scheme 'foo'"),
])
def test_an_mlflow_uri_that_cannot_work_is_named_in_seconds(uri, message):
    start = time.monotonic()
    problem = check_mlflow(uri, timeout_s=1.0)
    assert problem and message in problem and time.monotonic() - start < 5


def test_a_local_mlflow_store_is_accepted():
    assert check_mlflow("file:///tmp/mlruns") is None and check_mlflow("mlruns") is None


def test_mlflow_logging_goes_to_one_run_from_a_background_thread(tmp_path, monkeypatch):
    """MLflow keeps the active run per thread: the background logger must address the run by
    its id, or its first metric opens a second, empty run (what CI caught)."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    tracker = Tracker(TrackingOptions(mlflow_uri=uri, run_name="bg", params={"train.lr": 0.1}))
    main = threading.current_thread()
    assert tracker.mlflow.thread is not main
    tracker._log({"train/loss": 1.0}, 1)
    tracker._log({"train/loss": 0.5}, 2)
    tracker.close()
    client = mlflow.MlflowClient(tracking_uri=uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "raybench"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "bg" and run.data.params["train.lr"] == "0.1"
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5)]
