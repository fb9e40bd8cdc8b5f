"""Software versions and git revision, recorded in every run folder and model bundle."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

from . import __version__


def software_versions() -> dict[str, str]:
    """Versions of this package, Python and the libraries that change numbers."""
    import numpy
    import SimpleITK
    import sklearn
    import torch

    return {
        "wsp_cirrhosis": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "SimpleITK": SimpleITK.Version_VersionString(),
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
    }


def git_revision() -> str | None:
    """The git commit of the source tree, or None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
