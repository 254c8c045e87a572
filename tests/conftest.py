"""Shared test settings: small thread count (CI has 2 cores) and deterministic seeds."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny test models: one thread is fastest and leaves the other core to the OS
    yield
