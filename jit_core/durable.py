"""Durable files: every byte hashed on its way to disk, fsynced, then published by rename.

The primitives behind crash-safe checkpoints (:mod:`jit_core.runs.checkpoint`), converted official
checkpoints (:mod:`jit_core.runs.convert`, :mod:`jit_core.official.layout`) and V-Co's feature cache: a reader
never sees half a file, and every file written has its size and SHA-256 for a manifest.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

CHUNK = 1 << 23
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                      torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


class HashingSink:
    """File wrapper that counts and hashes what passes through: every checkpoint byte is written here."""

    def __init__(self, f):
        self.f, self.sha, self.nbytes = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.nbytes += view.nbytes
        return self.f.write(view)

    def flush(self) -> None:
        self.f.flush()


def write_file(path: Path, fill: Callable[[HashingSink], object]) -> dict:
    """Create ``path``, let ``fill`` write it, flush and fsync; return its manifest entry."""
    with open(path, "xb") as f:
        sink = HashingSink(f)
        fill(sink)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": sink.nbytes, "sha256": sink.sha.hexdigest()}


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some network file systems cannot fsync a directory
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def stream_safetensors(sink: HashingSink, sd: Mapping[str, torch.Tensor]) -> None:
    """The safetensors format, streamed one tensor at a time (no second copy of the state dict in memory)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, t in sd.items():
        n = t.numel() * t.element_size()
        header[key] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    sink.write(struct.pack("<Q", len(blob)) + blob)
    for t in sd.values():
        sink.write(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())


_HASHED: dict[str, tuple] = {}  # path -> (size, mtime_ns, inode, sha256): files already hashed in this process


def sha256_file(path: Path) -> str:
    """SHA-256 of a file (remembered per process while its size, mtime and inode stay the same)."""
    st = path.stat()
    sig = (st.st_size, st.st_mtime_ns, st.st_ino)
    cached = _HASHED.get(str(path))
    if cached and cached[:3] == sig:
        return cached[3]
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    _HASHED[str(path)] = (*sig, sha.hexdigest())
    return sha.hexdigest()


def replace_durably(path: Path, fill: Callable[[HashingSink], object]) -> dict:
    """Write ``path`` through a fsynced temporary file in the same folder, then rename it into place
    (and fsync the folder): ``path`` is either the old file or the complete new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)   # write_file creates it exclusively
    try:
        entry = write_file(Path(tmp), fill)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return entry
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
