import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/brute.py and friends

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
