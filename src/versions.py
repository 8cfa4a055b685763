"""The oldest version of each package that src/ needs, in one place: the offline notebook installs a wheel
when its package is missing or older than this, and infer.py checks them before it imports anything else
(an older pydicom fails at import, far from the cause). Kept free of imports beyond the standard library and
`packaging`, so the notebook can read it before installing anything.
"""
from __future__ import annotations

import importlib.metadata

from packaging.version import Version

MINIMUM_VERSIONS: dict[str, str] = {
    "pydicom": "3.0",  # pydicom.pixels (decoding and rescale) is new in 3.0
    "pylibjpeg": "2.0",
    "timm": "1.0",
    "albumentations": "2.0",
    "torch": "2.1",
    "numpy": "1.24",
    "pandas": "2.0",
    "pyyaml": "6.0",
}


def installed_version(package: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def too_old(package: str, version: str | None) -> bool:
    """Whether `version` of `package` is missing or older than src/ needs."""
    minimum = MINIMUM_VERSIONS.get(package)
    return version is None or (minimum is not None and Version(version) < Version(minimum))


def version_problems() -> list[str]:
    """One line per package src/ needs that is missing or too old, e.g. 'pydicom 2.4.4 (needs >= 3.0)'."""
    out = []
    for package, minimum in MINIMUM_VERSIONS.items():
        version = installed_version(package)
        if too_old(package, version):
            out.append(f"{package} {version or 'not installed'} (needs >= {minimum})")
    return out
