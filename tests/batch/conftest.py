"""Fixtures of the batch tests: one real local Dask cluster (2 worker processes, 1 thread each) per session."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # registered here too so that `-p no:xdist` runs keep working under --strict-markers
    config.addinivalue_line("markers", "xdist_group(name): run the tests of one group on one xdist worker")


@pytest.fixture(scope="session")
def dask_engine():
    """A started DaskEngine on a LocalCluster of 2 worker processes x 1 thread, bound to 127.0.0.1."""
    from medsamkit.batch import DaskEngine, EngineOptions

    engine = DaskEngine(EngineOptions(workers=2, threads_per_worker=1))
    engine.client.wait_for_workers(2, timeout=120)
    yield engine
    engine.close()
