import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # Tiny test models gain nothing from intra-op threads, and two OpenMP threads spin-waiting
    # on a busy 2-core machine made some tests ten times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
