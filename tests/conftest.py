import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    # Modules of many small convolutions: on a 2-core machine shared with other jobs, two OpenMP
    # threads wait on each other at every op (measured: 7 s vs 0.3 s per Inception image), so such
    # modules run single-threaded and restore the setting afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
