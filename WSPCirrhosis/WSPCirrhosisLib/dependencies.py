"""Python dependencies inside Slicer, checked when Apply is pressed (never at import or in tests).

- PyTorch comes from the PyTorch extension (PyTorchUtils, which picks the CUDA or CPU build),
  never from a plain pip install.
- Other packages (Resources/requirements.txt) go through `slicer.packaging.pip_ensure` (Slicer
  >= 5.12), or a confirmation dialog + `slicer.util.pip_install` on older versions.
- Packages Slicer bundles (SimpleITK, numpy, requests) are never replaced.
- The trainer package `wsp_cirrhosis` itself ships with the extension (see analysis.importTrainer).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import sys
from pathlib import Path

import slicer

TORCH_REQUIREMENT = ">=2.1"
REQUESTER = "WSPCirrhosis"
# Bundled with Slicer; replacing them breaks Slicer's own IO (SimpleITK) or forces a restart.
PROTECTED_PACKAGES = ("SimpleITK", "numpy", "requests", "torch", "torchvision")


class DependencyError(RuntimeError):
    """A required package is missing and was not installed (declined, failed, or testing mode);
    the message says what the user can do."""


def ensureTorch(askConfirmation: bool = True) -> None:
    """Make `import torch` work, installing PyTorch with the PyTorch extension if needed.

    Raises:
        DependencyError: the PyTorch extension is missing, the user declined, the installed
            torch is too old, or Slicer runs in testing mode (tests never install).
    """
    if _installedVersion("torch") is not None:
        _checkTorchVersion()
        return
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise DependencyError(
            "WSPCirrhosis needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, "
            "restart Slicer and press Apply again"
        ) from None
    if slicer.app.testingEnabled():
        raise DependencyError("PyTorch is not installed and testing mode never installs packages")
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        logging.info("WSPCirrhosis: installing PyTorch with the PyTorch extension")
        torch = torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise DependencyError("PyTorch is required to compute the prediction; its installation was cancelled")
    _checkTorchVersion()


def ensureRequirements(requirementsPath: str | Path, askConfirmation: bool = True) -> None:
    """Install the missing packages listed in `requirementsPath` after the user confirms.

    Packages that Slicer bundles (PROTECTED_PACKAGES) are only checked, never installed.

    Raises:
        DependencyError: a bundled package is too old, the user declined, or pip failed.
    """
    protected, installable = _readRequirements(requirementsPath)
    # A bundled package without pip metadata (a Slicer build detail) counts as present.
    tooOld = [req for req in protected
              if not _isSatisfied(req) and (_installedVersion(req.name) or not importlib.util.find_spec(req.name))]
    if tooOld:
        raise DependencyError(
            f"this Slicer bundles {', '.join(f'{r.name} {_installedVersion(r.name)}' for r in tooOld)} but WSPCirrhosis "
            f"needs {', '.join(str(r) for r in tooOld)}: use a recent Slicer (5.10 or later)")
    missing = [str(req) for req in installable if not _isSatisfied(req)]
    if not missing:
        return
    packaging = slicerPackaging()
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        try:
            packaging.pip_ensure(missing, skip_packages=list(PROTECTED_PACKAGES), prompt_install=askConfirmation,
                                 requester=REQUESTER)
        except RuntimeError as exc:  # raised when the user declines
            raise DependencyError(f"required Python packages were not installed ({exc})") from None
        return
    if slicer.app.testingEnabled():
        raise DependencyError(f"missing packages {', '.join(missing)}; testing mode never installs packages")
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            "WSPCirrhosis needs Python packages that are not installed yet. Install them now?",
            "WSPCirrhosis - install Python packages", detailedText="\n".join(missing)):
        raise DependencyError(f"required Python packages were not installed: {', '.join(missing)}")
    try:
        slicer.util.pip_install(missing)
    except Exception as exc:  # pip's CalledProcessError and friends: one readable line
        raise DependencyError(f"installing {', '.join(missing)} failed ({exc}); restart Slicer and retry") from None


def slicerPackaging():
    """`slicer.packaging` (Slicer >= 5.12), or None on older Slicer.

    A submodule is an attribute of `slicer` only once something has imported it, so it is
    imported here rather than looked up with getattr.
    """
    try:
        import slicer.packaging
    except ImportError:
        return None
    return sys.modules.get("slicer.packaging")


def ensureAll(requirementsPath: str | Path, askConfirmation: bool = True) -> None:
    """PyTorch first (other packages may depend on it), then the requirements file."""
    ensureTorch(askConfirmation)
    ensureRequirements(requirementsPath, askConfirmation)


def _checkTorchVersion() -> None:
    from packaging.specifiers import SpecifierSet

    version = _installedVersion("torch")
    if version is not None and version.split("+")[0] not in SpecifierSet(TORCH_REQUIREMENT):
        # No restart offer here: restarting first changes nothing, the old torch must go first.
        raise DependencyError(
            f"PyTorch {version} is installed but WSPCirrhosis needs torch{TORCH_REQUIREMENT}. To update it: "
            f"1. open the 'PyTorch Utils' module and click Uninstall; 2. restart Slicer; 3. in 'PyTorch Utils' "
            f"install with version requirement '{TORCH_REQUIREMENT}'; 4. press Apply again"
        )


def _readRequirements(path: str | Path):
    """(protected, installable) Requirement lists from a requirements file (comments dropped)."""
    from packaging.requirements import Requirement

    protectedNames = {name.lower() for name in PROTECTED_PACKAGES}
    protected, installable = [], []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (protected if req.name.lower() in protectedNames else installable).append(req)
    return protected, installable


def _isSatisfied(req) -> bool:
    """True when `req` (a packaging Requirement) is installed, or its marker excludes this platform."""
    if req.marker is not None and not req.marker.evaluate():
        return True
    version = _installedVersion(req.name)
    return version is not None and (not req.specifier or req.specifier.contains(version, prereleases=True))


def _installedVersion(distribution: str) -> str | None:
    """Installed version from the package metadata, without importing the package."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
