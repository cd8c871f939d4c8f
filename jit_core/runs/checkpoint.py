"""Crash-safe run checkpoints: writing, reading and verifying them, and checking weights against a model.

Layout of a run folder::

    <run>/checkpoints/step-00000100/   model.safetensors ema1.safetensors ema2.safetensors [aux.safetensors]
                                       trainer.pt manifest.json
    <run>/checkpoints/latest           names the newest complete checkpoint directory

A checkpoint is written into ``step-XXXXXXXX.tmp-<pid>``: every file is fsynced, ``manifest.json`` (size
and SHA-256 of every file) comes last, then the directory is renamed to its final name and ``latest`` is
replaced atomically. A crash or a full disk at any point leaves the previous checkpoint and ``latest`` as
they were; a kill between the rename and the update of ``latest`` leaves a newer checkpoint whose manifest
names the one ``latest`` still names as ``previous``, and :func:`latest_checkpoint` takes it. A checkpoint
damaged later fails :func:`verify_checkpoint`, and :func:`latest_checkpoint` falls back to the previous one.
``trainer.pt`` only ever holds plain Python values and tensors, so it loads with ``torch.load(weights_only=True)``;
nothing in this module unpickles arbitrary objects.

Official JiT / V-Co ``checkpoint-*.pth`` files are read and written by :mod:`jit_core.official.layout`;
:func:`jit_core.runs.loading.load_weights` reads weights from any of these sources, and ``jit convert``
lives in :mod:`jit_core.runs.convert`.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import functools
import json
import logging
import os
import re
import shutil
import time
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, cast

import torch
from safetensors.torch import load_file
from torch import nn

from jit_core.durable import (
    SAFETENSORS_DTYPES,
    WriteError,
    ensure_dir,
    fsync_dir,
    pid_alive,
    sha256_file,
    stream_safetensors,
    write_file,
    write_text,
)
from jit_core.errors import CheckpointError, CorruptCheckpointError, first_line, weights_only_refusal

log = logging.getLogger(__name__)

FORMAT = "jit-vco/1"
WEIGHT_NAMES = ("model", "ema1", "ema2")
_STEP_RE = re.compile(r"^step-(\d{8,})$")
# leftovers of interrupted writers: tmp (being written), old (replaced by a re-save), del (being deleted)
_LEFTOVER_RE = re.compile(r"^(?:step-\d{8,}\.(tmp|old|del)|latest\.tmp)-(\d+)$")
_PLAIN = (type(None), bool, int, float, str, bytes, torch.Size, torch.dtype, torch.device)


# ------------------------------------------------------------------------------------------ writing
def _check_weights(name: str, sd) -> None:
    if not re.fullmatch(r"\w+", name):
        raise CheckpointError(f"weights name {name!r} is not a plain identifier (use model/ema1/ema2/aux)")
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"weights[{name!r}] is a {type(sd).__name__}, expected a state dict")
    for key, t in sd.items():
        if not isinstance(key, str) or key.startswith("__"):
            raise CheckpointError(f"weights[{name!r}] has an invalid key {key!r}")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"weights[{name!r}][{key!r}] is a {type(t).__name__}, not a tensor")
        if t.dtype not in SAFETENSORS_DTYPES or t.layout != torch.strided:
            raise CheckpointError(f"weights[{name!r}][{key!r}]: {t.dtype} {t.layout} tensors cannot be stored")


def _check_state(obj, where: str = "state") -> None:
    """Refuse, before anything is written, what ``torch.load(weights_only=True)`` could not read back."""
    kind = type(obj)
    if kind in _PLAIN or isinstance(obj, torch.Tensor) and kind in (torch.Tensor, nn.Parameter):
        return
    if kind in (dict, collections.OrderedDict):
        for key, value in obj.items():
            _check_state(key, f"{where} key {key!r}")
            _check_state(value, f"{where}[{key!r}]")
    elif kind in (list, tuple, set):
        for i, value in enumerate(obj):
            _check_state(value, f"{where}[{i}]")
    else:
        raise CheckpointError(f"{where} is a {kind.__module__}.{kind.__qualname__}, which trainer.pt cannot hold "
                              "(it must load with torch.load(weights_only=True)); convert it to plain Python "
                              "(str for paths, .item() / .tolist() for numpy values, dataclasses.asdict for configs)")


def _complete(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every final-named checkpoint dir under ``root``, by step."""
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def _read_latest(root: Path) -> Path | None:
    try:
        with open(root / "latest", "rb") as f:
            text = f.read(256).decode(errors="replace").strip()
    except OSError:
        return None
    if _STEP_RE.match(text) and (root / text).is_dir():
        return root / text
    log.warning("ignoring %s: it names %r, which is not a checkpoint directory there", root / "latest", text[:64])
    return None


def _write_latest(root: Path, name: str) -> None:
    write_text(root / "latest", f"{name}\n")   # atomic; a link in its place is refused


def _remove_dir(path: Path) -> None:
    """Delete a checkpoint dir so that it disappears at once (rename), then free the space."""
    doomed = path.with_name(f"{path.name}.del-{os.getpid()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _clean_leftovers(root: Path) -> None:
    """Remove what crashed writers left behind: those whose pid is gone, or older than the newest checkpoint."""
    done = _complete(root)
    newest = (done[-1][1] / "manifest.json") if done else None
    newest_time = newest.stat().st_mtime if newest is not None and newest.exists() else None
    for entry in root.iterdir():
        m = _LEFTOVER_RE.match(entry.name)
        if not m:
            continue
        pid = int(m[2])
        try:
            older = newest_time is not None and entry.stat().st_mtime < newest_time
        except FileNotFoundError:
            continue
        if pid_alive(pid) and pid != os.getpid() and not older:
            continue
        final = root / entry.name.split(".")[0]
        if m[1] == "old" and not final.exists():  # crashed between the two renames of a re-save: restore it
            log.warning("restoring %s from %s", final, entry)
            os.rename(entry, final)
        elif entry.is_dir():
            log.info("removing leftover %s", entry)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _apply_retention(root: Path, step: int, keep_last: int, keep_every: int) -> None:
    """Keep the newest ``keep_last`` (at least the one just written) and every multiple of ``keep_every``.

    Checkpoints with a higher step than the one just written (left by a run that resumed from an earlier
    checkpoint) are not touched.
    """
    older = [(s, p) for s, p in _complete(root) if s <= step]
    keep = {s for s, _ in older[-max(keep_last, 1):]} | {step}
    if keep_every > 0:
        keep |= {s for s, _ in older if s % keep_every == 0}
    for s, p in older:
        if s not in keep:
            log.info("retention: deleting %s", p)
            _remove_dir(p)


def save_checkpoint(run_dir, step: int, weights: dict[str, dict[str, torch.Tensor]], state: dict,
                    keep_every: int = 0, keep_last: int = 1) -> Path:
    """Write ``<run_dir>/checkpoints/step-XXXXXXXX/`` atomically and point ``latest`` at it.

    ``weights``: ``{"model": sd, "ema1": sd, "ema2": sd[, "aux": sd]}`` -> ``<name>.safetensors``.
    ``state``: plain Python and tensors (optimizer state, RNG states, step, config...) -> ``trainer.pt``.
    Old checkpoints are pruned (see ``keep_last`` / ``keep_every``) only once the new one is complete.
    Returns the checkpoint directory.
    """
    step = int(step)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if "model" not in weights:
        raise CheckpointError(f"weights must contain 'model' (got {sorted(weights)})")
    for name, sd in weights.items():
        _check_weights(name, sd)
    if not isinstance(state, dict):
        raise CheckpointError(f"state must be a dict, got {type(state).__name__}")
    _check_state(state)

    root = ensure_dir(Path(run_dir) / "checkpoints")   # a link in its place would put the checkpoints elsewhere
    _clean_leftovers(root)
    name = f"step-{step:08d}"
    final, tmp = root / name, root / f"{name}.tmp-{os.getpid()}"
    previous = _read_latest(root) or next((p for _, p in reversed(_complete(root))), None)
    aside, renamed = None, False
    try:
        tmp.mkdir()
        files = {f"{k}.safetensors": write_file(tmp / f"{k}.safetensors", functools.partial(stream_safetensors, sd=sd))
                 for k, sd in weights.items()}
        # torch.save only writes and flushes: the sink's two methods are all of IO[bytes] it uses
        files["trainer.pt"] = write_file(tmp / "trainer.pt", lambda s: torch.save(state, cast(IO[bytes], s)))
        manifest = {"format": FORMAT, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "previous": previous.name if previous is not None else None, "files": files}
        write_file(tmp / "manifest.json", lambda s: s.write(json.dumps(manifest, indent=1).encode()))
        fsync_dir(tmp)
        if final.exists():  # re-save of the same step: move the old one aside, delete it once the new one is in
            aside = root / f"{name}.old-{os.getpid()}"
            os.rename(final, aside)
        os.rename(tmp, final)
        renamed = True
        fsync_dir(root)
        _write_latest(root, name)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if renamed:
            shutil.rmtree(final, ignore_errors=True)
        if aside is not None and aside.exists() and not final.exists():
            with contextlib.suppress(OSError):  # else the next save's cleanup restores it
                os.rename(aside, final)
        if isinstance(exc, WriteError) and isinstance(exc.__cause__, OSError):
            exc = exc.__cause__                      # said below with the checkpoint's own context
        if not isinstance(exc, OSError):
            raise
        intact = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(f"disk full while writing checkpoint {final}: free space in {root}; {intact}") from exc
        raise CheckpointError(f"could not write checkpoint {final}: {exc}; {intact}") from exc
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    _apply_retention(root, step, keep_last, keep_every)
    _clean_leftovers(root)
    return final


# ------------------------------------------------------------------------------------------ reading
_FIX = "restore it, or resume from an earlier checkpoint (latest_checkpoint falls back automatically)"


def _read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}")
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise CorruptCheckpointError(f"{mpath} is missing: checkpoint {path} is incomplete or damaged; {_FIX}")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"{mpath} is unreadable ({e}); {_FIX}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{mpath} has format {found!r}, expected {FORMAT!r}: not a jit-vco checkpoint "
                              "(or one from a newer version)")
    files = manifest.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        raise CorruptCheckpointError(f"{mpath} lists no model.safetensors; {_FIX}")
    for fname, info in files.items():
        missing = [k for k, kind in (("bytes", int), ("sha256", str))
                   if not isinstance(info, dict) or not isinstance(info.get(k), kind)]
        if missing:
            raise CorruptCheckpointError(f"{mpath}: the entry of {fname} has no valid {' or '.join(missing)} (the "
                                         f"manifest was edited or damaged); {_FIX}")
    return manifest


def _check_files(path: Path, manifest: dict, names, verify_hash: bool) -> None:
    for fname in names:
        info, fp = manifest["files"][fname], path / fname
        if Path(fname).name != fname:
            raise CorruptCheckpointError(f"{path / 'manifest.json'} lists an invalid file name {fname!r}")
        if not fp.is_file():
            raise CorruptCheckpointError(f"{fp} is missing; {_FIX}")
        size = fp.stat().st_size
        if size != info["bytes"]:
            raise CorruptCheckpointError(f"{fp} has {size} bytes but the manifest records {info['bytes']} "
                                         f"(truncated or overwritten); {_FIX}")
        if verify_hash and (sha := sha256_file(fp)) != info["sha256"]:
            raise CorruptCheckpointError(f"{fp} fails its SHA-256 check (file {sha[:12]}..., manifest "
                                         f"{info['sha256'][:12]}...): the file is damaged; {_FIX}")


def verify_checkpoint(path, verify_hash: bool = True) -> dict:
    """Check that the manifest exists and every file it lists has its recorded size (and SHA-256).

    Returns the manifest; raises :class:`CorruptCheckpointError` naming the bad file. Hashes are cached per
    file (size, mtime, inode), so verifying the same checkpoint twice in a process reads it once.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    _check_files(path, manifest, list(manifest["files"]), verify_hash)
    return manifest


def list_checkpoints(run_dir) -> list[Path]:
    """Complete (final-named, not tmp) checkpoint dirs of a run, by step. Not verified."""
    return [p for _, p in _complete(Path(run_dir) / "checkpoints")]


def _previous_of(path: Path) -> str | None:
    """The ``previous`` a manifest records (what ``latest`` named when it was written); None if unreadable."""
    try:
        with open(path / "manifest.json", "rb") as f:
            value = json.loads(f.read(1 << 20)).get("previous")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _step_of(path: Path) -> int:
    """The step a checkpoint folder's name holds (``step-00001234`` -> 1234)."""
    m = _STEP_RE.match(path.name)
    if m is None:
        raise ValueError(f"{path} is not a checkpoint folder (step-NNNNNNNN)")
    return int(m[1])


def _successors(done: list[tuple[int, Path]], start: Path) -> list[Path]:
    """Checkpoints written after ``start`` by the run that continued from it, oldest first: each one's manifest
    names the one before as ``previous``. A kill between a checkpoint's rename and the update of ``latest``
    leaves such a successor; a higher step left by another line of the run (one that resumed from an earlier
    checkpoint) names another ``previous`` and is not followed."""
    chain, current = [], start.name
    start_step = _step_of(start)
    for step, path in done:
        if step > start_step and _previous_of(path) == current:
            chain.append(path)
            current = path.name
    return chain


def latest_checkpoint(run_dir, verify_hash: bool = True) -> Path | None:
    """The newest checkpoint of a run that verifies; None if the run has no checkpoint.

    Starts from the newest checkpoint of the run's line: the one ``latest`` names, or a newer one written
    after it whose pointer update a kill prevented (:func:`_successors`); without a usable ``latest``, the
    highest step. Then goes back step by step, warning about every checkpoint that fails verification.
    Raises :class:`CorruptCheckpointError` if checkpoints exist but none verifies (rather than silently
    starting over).
    """
    root = Path(run_dir) / "checkpoints"
    done = _complete(root)
    candidates = [p for _, p in reversed(done)]
    pointer = _read_latest(root)
    if pointer in candidates:
        first = [*reversed(_successors(done, pointer)), pointer]
        if len(first) > 1:
            log.info("%s names %s, but %s was written after it (the pointer update was interrupted): resuming "
                        "from the newer one", root / "latest", pointer.name, first[0].name)
        candidates = first + [p for p in candidates if p not in first]
    problems = []
    for path in candidates:
        try:
            verify_checkpoint(path, verify_hash=verify_hash)
            return path
        except CheckpointError as e:
            problems.append(str(e))
            msg = f"skipping checkpoint {path.name}: {e}; falling back to the previous checkpoint"
            log.warning(msg)
            warnings.warn(msg, stacklevel=2)
    if problems:
        raise CorruptCheckpointError(f"none of the {len(problems)} checkpoints in {root} verifies "
                                     f"(newest: {problems[0]}); move them away to start the run afresh")
    return None


def resolve_checkpoint(path) -> Path:
    """A checkpoint dir as given, or a run dir -> its latest valid checkpoint; CheckpointError for anything else."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such checkpoint: {path}")
    if path.is_dir() and not (path / "manifest.json").exists() and (path / "checkpoints").is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"run {path} has no checkpoint yet (nothing in {path / 'checkpoints'})")
        return found
    if path.is_dir() and not (path / "manifest.json").exists() and not _STEP_RE.match(path.name):
        raise CheckpointError(f"{path} is neither a checkpoint directory (no manifest.json) nor a run directory "
                              "(no checkpoints/); pass a run folder, a checkpoints/step-XXXXXXXX folder or a file")
    return path


def _device(map_location) -> str:
    return str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"


def read_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors; a damaged file is one :class:`CorruptCheckpointError` line."""
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CorruptCheckpointError(f"cannot read {path}: {e}; {_FIX}") from e


def check_state_file(path) -> Path:
    """``trainer.pt`` of the checkpoint ``path`` exists and is the zip archive ``torch.save`` writes (cheap: no load)."""
    fp = Path(path) / "trainer.pt"
    if not fp.is_file():
        raise CorruptCheckpointError(f"{fp} is missing; {_FIX}")
    if not zipfile.is_zipfile(fp):
        raise CorruptCheckpointError(f"{fp} is not a torch checkpoint file (not the zip archive torch.save writes): it "
                                     f"was damaged or replaced; {_FIX}")
    return fp


def check_weight_values(name: str, sd: dict[str, torch.Tensor], fp: Path) -> None:
    """The network weights ``sd`` (model / ema1 / ema2, read from ``fp``) are usable: every tensor floating point
    and finite. The rule for dtypes: float16 / bfloat16 / float64 tensors are accepted and cast to the model's
    dtype when loaded into it (``load_state_dict`` copies); integer, bool and complex tensors are refused, as no
    weight of the network is one. A NaN or inf is refused: sampling would give black images, a resume NaN losses."""
    for key, t in sd.items():
        if not t.is_floating_point():
            raise CheckpointError(f"{fp}: {key} is a {t.dtype} tensor, but {name} weights are floating point: the file "
                                  f"was not written by jit-vco; {_FIX}")
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{fp}: {key} holds {bad} NaN/inf value(s): the weights are unusable; {_FIX}")


def read_weights(path, which: str = "ema1") -> dict[str, torch.Tensor]:
    """One set of weights (``model``, ``ema1``, ``ema2`` or ``aux``) of a checkpoint dir, or of a run dir's latest
    checkpoint: only that file is read, after its size and SHA-256 are checked against the manifest."""
    found = resolve_checkpoint(path)
    manifest = _read_manifest(found)
    fname = f"{which}.safetensors"
    if fname not in manifest["files"]:
        have = [Path(n).stem for n in manifest["files"] if n.endswith(".safetensors")]
        raise CheckpointError(f"checkpoint {found} has no {which!r} weights (it has {have})")
    _check_files(found, manifest, [fname], verify_hash=True)
    sd = read_safetensors(found / fname)
    if which in WEIGHT_NAMES:
        check_weight_values(which, sd, found / fname)
    return sd


# trainer.pt: the keys a reader uses and their types (the file is untrusted input); "step" is required
STATE_TYPES = {"step": (int,), "optimizer": (dict,), "elapsed": (int, float), "skipped": (int,), "rng": (dict,),
               "rng_per_rank": (list,), "world_size": (int,)}


def check_state_schema(state, fp: Path) -> dict:
    """``state`` (``trainer.pt`` read from ``fp``) if it is a dict whose keys have the types jit-vco writes."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{fp} holds a {type(state).__name__}, not the dict jit-vco writes: it was damaged or "
                              f"replaced; {_FIX}")
    if "step" not in state:
        raise CheckpointError(f"{fp} has no 'step': it was not written by jit-vco; {_FIX}")
    for key, types in STATE_TYPES.items():
        value = state.get(key)
        if key in state and (not isinstance(value, types) or isinstance(value, bool)):
            want = " or ".join(t.__name__ for t in types)
            raise CheckpointError(f"{fp}: {key!r} is a {type(value).__name__}, expected {want}: it was not written "
                                  f"by jit-vco; {_FIX}")
    if state["step"] < 0 or state.get("world_size", 1) < 1:
        raise CheckpointError(f"{fp}: step {state['step']} / world_size {state.get('world_size')} out of range; {_FIX}")
    return state


def load_checkpoint(path, map_location="cpu", verify: bool = True) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """``(weights, state)`` of a checkpoint dir (or a run dir -> its latest checkpoint).

    ``weights`` maps model/ema1/ema2[/aux] to state dicts; ``state`` is ``trainer.pt``, read with
    ``torch.load(weights_only=True)``. Both are checked before use: the network weights by
    :func:`check_weight_values` (floating point, finite), ``trainer.pt`` by :func:`check_state_schema`.
    """
    path = resolve_checkpoint(path)
    if verify:
        names = list(verify_checkpoint(path)["files"])
    elif (path / "manifest.json").is_file():
        names = list(_read_manifest(path)["files"])
    else:
        names = sorted(p.name for p in path.glob("*.safetensors")) + ["trainer.pt"]
    device = _device(map_location)
    weights = {Path(n).stem: read_safetensors(path / n, device) for n in names if n.endswith(".safetensors")}
    fp = check_state_file(path)
    try:
        state = torch.load(fp, map_location=map_location, weights_only=True)
    except Exception as e:
        if re.search(r"Unsupported global|unsupported GLOBAL", str(e)):      # real pickled objects: refused
            raise weights_only_refusal(fp, e) from e
        raise CorruptCheckpointError(f"cannot read {fp} ({first_line(e)}): the file is damaged; {_FIX}") from e
    for name in WEIGHT_NAMES:
        if name in weights:
            check_weight_values(name, weights[name], path / f"{name}.safetensors")
    return weights, check_state_schema(state, fp)
