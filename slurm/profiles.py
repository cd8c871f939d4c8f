"""Named cluster profiles: a cluster's defaults for `jit slurm submit --profile NAME`.

A profile is a TOML file ``NAME.toml`` in ``~/.config/jit-vco/clusters/`` (``$XDG_CONFIG_HOME`` is
honoured; ``$JIT_CLUSTER_PROFILES`` may name other folders, ``:``-separated, searched first) or in the
repository's ``slurm/profiles/``. The first folder that holds ``NAME.toml`` wins. Keys are the long
option names of ``jit slurm submit`` with ``_`` for ``-`` (``gpus_per_node = 8``), plus ``setup``
(shell lines run before the job starts), ``env`` (variables exported to the job), ``sbatch`` (extra
``#SBATCH`` flags, as ``--sbatch KEY=VALUE``), ``signal_delay_s`` and ``python``. Options given on
the command line override the profile.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

try:                 # Python >= 3.11
    import tomllib  # type: ignore[import-not-found,unused-ignore]  # mypy checks as Python 3.10, which lacks it
except ModuleNotFoundError:   # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

REPO_PROFILES = Path(__file__).resolve().parent / "profiles"

# key -> accepted Python types (bool is checked before int: True is an int)
PROFILE_KEYS: dict[str, tuple[type, ...]] = {
    "description": (str,),
    "executor": (str,),
    "nodes": (int,),
    "gpus_per_node": (int,),
    "tasks_per_node": (int,),
    "cpus_per_task": (int,),
    "mem_per_task": (int, float),     # GB per task
    "partition": (str,),
    "account": (str,),
    "qos": (str,),
    "time": (str, int),               # minutes, HH:MM:SS or D-HH:MM:SS
    "constraint": (str,),
    "job_name": (str,),
    "max_requeues": (int,),
    "signal_delay_s": (int,),         # seconds between submitit's USR2 and the time limit
    "allow_local_run_dir": (bool,),
    "python": (str,),                 # command that starts Python on the nodes (default: this interpreter)
    "setup": (list,),                 # shell lines run in the sbatch script before srun
    "env": (dict,),                   # environment variables exported to the job
    "sbatch": (dict,),                # extra #SBATCH flags: {"exclusive": "", "mail-type": "END"}
}


class ProfileError(ValueError):
    """A missing or malformed profile; the message says what to fix."""


def profile_dirs() -> list[Path]:
    """Folders searched for ``NAME.toml``, in order."""
    dirs = [Path(p).expanduser() for p in os.environ.get("JIT_CLUSTER_PROFILES", "").split(os.pathsep) if p]
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    dirs += [config_home / "jit-vco" / "clusters", REPO_PROFILES]
    return dirs


def available_profiles() -> dict[str, Path]:
    """name -> file of every profile found (the first folder wins for a name)."""
    found: dict[str, Path] = {}
    for folder in profile_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def _check(data: dict[str, Any], path: Path) -> dict[str, Any]:
    for key, value in data.items():
        if key not in PROFILE_KEYS:
            close = difflib.get_close_matches(key, list(PROFILE_KEYS), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ProfileError(f"{path}: unknown key {key!r}{hint}; known keys: {', '.join(PROFILE_KEYS)}")
        types = PROFILE_KEYS[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = " or ".join(t.__name__ for t in types)
            raise ProfileError(f"{path}: {key} = {value!r} should be a {want}")
    for key in ("env", "sbatch"):
        for k, v in data.get(key, {}).items():
            if isinstance(v, (dict, list)):
                raise ProfileError(f"{path}: {key}.{k} must be a string, number or boolean, not {type(v).__name__}")
    if any(not isinstance(line, str) for line in data.get("setup", [])):
        raise ProfileError(f"{path}: setup must be a list of shell lines (strings)")
    return data


def load_profile_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path} is not valid TOML: {exc}") from exc
    return _check(data, path)


def load_profile(name: str) -> dict[str, Any]:
    """The settings of profile ``name`` (a name, or a path to a .toml file)."""
    if name.endswith(".toml") or os.sep in name:
        if not Path(name).is_file():
            raise ProfileError(f"cluster profile file {name} does not exist")
        return load_profile_file(name)
    found = available_profiles()
    if name not in found:
        close = difflib.get_close_matches(name, list(found), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = ", ".join(str(d) for d in profile_dirs())
        listing = ", ".join(sorted(found)) or "none"
        raise ProfileError(f"unknown cluster profile {name!r}{hint}; available: {listing}. "
                           f"Create {profile_dirs()[-2] / (name + '.toml')} (see slurm/profiles/example.toml); "
                           f"profiles are searched in: {where}")
    return load_profile_file(found[name])
