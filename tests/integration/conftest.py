"""One real local Ray instance for the whole session: each start costs seconds."""

from __future__ import annotations

import os

import pytest

from raybench.backends.ray_cluster import LOCAL_RAY_ENV, REPORT_POLL_S


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    for key, value in {**LOCAL_RAY_ENV,
                       "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(REPORT_POLL_S)}.items():
        os.environ.setdefault(key, value)
    # 4 logical CPUs on a 2-core machine: Ray may run more workers than cores.
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level="error")
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
