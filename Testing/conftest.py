"""Shared test set-up: headless plotting, few threads, the test-support module on sys.path."""

import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-abdominal-ct"


@pytest.fixture(scope="session")
def real_ct() -> Path:
    """The real 20-slice abdominal CT (DICOM) with its multi-label map (liver = 5), if present."""
    if not (REAL_CT / "ct_dicom").is_dir():
        pytest.skip(f"real CT not found at {REAL_CT}")
    return REAL_CT
