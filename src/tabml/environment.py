"""The software environment a model was trained or is served in, for provenance records."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable
from importlib import metadata


def package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(packages: Iterable[str]) -> dict[str, str]:
    """Python version, machine architecture and the versions of `packages`."""
    return {
        "python_version": sys.version.split()[0],
        "machine": platform.machine(),
        **{f"package.{name}": package_version(name) for name in packages},
    }
