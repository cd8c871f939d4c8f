"""Errors the CLI turns into one line: untrusted files (checkpoints, official .pth files) and plugins. Each names the fix."""
from __future__ import annotations

import re
from pathlib import Path


class CheckpointError(RuntimeError):
    """A checkpoint that is foreign, unreadable or incompatible; the message names the file and the fix."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint of ours that is incomplete or damaged (missing file, wrong size or hash)."""


def first_line(e: Exception) -> str:
    """The informative line of a torch.load error (weights-only errors put it after a long preamble)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = [line for line in lines if line.startswith(("Unsupported operand", "WeightsUnpickler error"))]
    return (detail or lines or [type(e).__name__])[-1 if detail else 0]


def weights_only_refusal(path: Path, e: Exception) -> CheckpointError:
    m = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(e))
    what = f"the pickled object {m[1]}" if m else "pickled objects"
    return CheckpointError(f"refused to load {path}: it holds {what}, outside torch's weights_only allow-list; "
                           "jit-vco never unpickles arbitrary code. Re-save the file with plain tensors and "
                           "Python values (only if you trust where it came from)")


class PluginError(RuntimeError):
    """A plugin failed to load, a hook raised, or two plugins conflict; the message names the plugin(s) and the hook."""
