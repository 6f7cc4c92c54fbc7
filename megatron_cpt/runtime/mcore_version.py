"""The megatron-core line this project is tested with, and the check that the installed one is in
it. ``setup.py`` reads ``MEGATRON_CORE_REQUIREMENT`` from this file (standard library only), so
the installed requirement and the check at start are one setting.

What the next line needs, read from megatron-core 0.17.1, 0.18.2 and 0.19.2 (docs/TRAINING.md).
"""

from __future__ import annotations

import importlib.metadata

MEGATRON_CORE_REQUIREMENT = "megatron-core>=0.16.1,<0.17"


def megatron_core_version_problem() -> str | None:
    """Why the installed megatron-core cannot be used, or None. Reads the installed version
    from its metadata, without importing it."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    requirement = Requirement(MEGATRON_CORE_REQUIREMENT)
    try:
        installed = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return (f"megatron-core is not installed; install {requirement} "
                f"(pip install 'megatron-core{requirement.specifier}')")
    if requirement.specifier.contains(Version(installed), prereleases=True):
        return None
    return (f"megatron-core {installed} is installed, but megatron-cpt is tested with "
            f"{requirement.specifier} only; install it with pip install "
            f"'megatron-core{requirement.specifier}' (docs/TRAINING.md: what a newer line needs)")


def check_megatron_core_version() -> None:
    """Before a command that runs on megatron-core starts, and in every rank."""
    from megatron_cpt.errors import UserError

    problem = megatron_core_version_problem()
    if problem is not None:
        raise UserError(problem)
