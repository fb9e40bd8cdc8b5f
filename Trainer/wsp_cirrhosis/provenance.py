"""Software versions and git revision, recorded in every run folder and model bundle."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

from . import __version__


def software_versions() -> dict[str, str]:
    """Versions of this package, Python and the libraries that change numbers.

    Read from package metadata, so recording them imports nothing heavy.
    """
    from importlib.metadata import PackageNotFoundError, version

    out = {"wsp_cirrhosis": __version__, "python": sys.version.split()[0]}
    for name in ("torch", "numpy", "SimpleITK", "scikit-learn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    out["platform"] = platform.platform()
    return out


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for benchmark headers."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    """The git commit of the source tree, or None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
