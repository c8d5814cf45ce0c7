"""Training tests use tiny models: one torch thread is as fast, and does not stall when the CPU is shared."""

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
