"""Shared pytest setup: one torch thread per test process, since small models run faster and far
more steadily that way on this 2-core machine (docs/architecture.md §9), and each test is seeded."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
