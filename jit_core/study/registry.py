"""The named studies of the installed plugins (hook ``jit_studies``)."""
from __future__ import annotations

from .spec import Study, StudyError


def available_studies() -> dict[str, Study]:
    """``{name: Study}`` from every installed plugin (a broken plugin is skipped, as for presets)."""
    from jit_core.plugins.presets import from_installed
    studies: dict[str, Study] = {}
    for found in from_installed("jit_studies"):
        studies.update(found or {})
    return studies


def get_study(name: str) -> Study:
    studies = available_studies()
    if name not in studies:
        known = ", ".join(sorted(studies)) or "none (install a plugin that adds studies, e.g. V-Co)"
        raise StudyError(f"no study named {name!r}; the installed studies: {known} (`jit study --list`)")
    return studies[name]
