"""One torch thread per training test: tiny models gain nothing from two, and the machine is shared."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):  # tests/conftest.py's fixture, for every test in this folder
    yield
