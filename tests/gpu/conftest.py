"""The CUDA checks (scripts/gpu_checks.sh runs them: `pytest -q tests/gpu`). They are
not collected by the default test run, which is CPU-only; on a machine without a CUDA
GPU they fail rather than pass unseen."""

import pytest
import torch


@pytest.fixture(scope="session")
def cuda():
    if not torch.cuda.is_available():
        pytest.fail(
            "tests/gpu needs a CUDA GPU: run it on a GPU machine "
            "(scripts/gpu_checks.sh)"
        )
    return torch.device("cuda")
