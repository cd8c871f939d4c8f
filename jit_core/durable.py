"""Every file the project writes goes through this module: created without following links, replaced
atomically, appended only to regular files, with one-line errors for a full disk or a read-only folder.

The rules (docs/architecture.md, "Writing files"):

- a new file is created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``): a link planted in its place is
  never followed, so nothing outside the folder is created or emptied;
- a file that may already exist is written whole to an exclusive temporary file in the same folder,
  fsynced, then renamed over the old one (:func:`replace_durably`): a reader, an interrupted writer or a
  full disk sees the old file or the complete new one, never half of either;
- an append (``metrics.jsonl``, ``history.jsonl``, logs) opens with ``O_APPEND | O_NOFOLLOW`` and checks it
  got a regular file (:func:`append_text`, :func:`open_append`);
- a link in the place of any file the project writes is refused in one line (:class:`WriteError`), as are a
  full disk and a read-only folder;
- the path written is always built by the writer from the folder it was given and a name it chose: never a
  path read from a file (a result, a manifest, a config).

Every file written also has its size and SHA-256 for a manifest (:func:`write_file`), the primitive behind
crash-safe checkpoints (:mod:`jit_core.runs.checkpoint`) and converted official checkpoints.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import stat
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, cast

import torch

CHUNK = 1 << 23
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                      torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WriteError(RuntimeError):
    """A file could not be written: a link in its place, a full disk, a read-only or unwritable folder.
    The message is one line naming the file and the fix; the previous file, if any, is unchanged."""


def _link_error(path: Path) -> WriteError:
    return WriteError(f"{path} is a symbolic link: jit-vco never writes through a link (it could point anywhere); "
                      "remove the link (or replace it by a regular file) and re-run")


def write_error(exc: OSError, path: Path) -> WriteError | OSError:
    """The one-line :class:`WriteError` for an ``OSError`` met while writing ``path`` (the error itself when it
    is not one the user can fix)."""
    path = Path(path)
    if exc.errno in _FULL:
        return WriteError(f"disk full: could not write {path} ({os.strerror(exc.errno)}); the previous file, if any, "
                          f"is unchanged: free space in {path.parent} and re-run")
    if exc.errno == errno.EROFS:
        return WriteError(f"{path.parent} is on a read-only file system: cannot write {path.name} there; make it "
                          "writable, or copy the folder somewhere writable (or pass another --out) and re-run")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return WriteError(f"permission denied writing {path}: make {path.parent} writable for this user, or write "
                          "somewhere else (another --out / --run-dir) and re-run")
    if exc.errno == errno.ELOOP:
        return _link_error(path)
    return exc


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn the ``OSError`` of a write to ``path`` into its one-line :class:`WriteError`."""
    try:
        yield
    except OSError as e:
        err = write_error(e, path)
        if err is e:
            raise
        raise err from e


def refuse_link(path: Path) -> None:
    """Refuse to write where a symbolic link (dangling or not) stands."""
    if os.path.islink(path):
        raise _link_error(Path(path))


def ensure_dir(path: Path) -> Path:
    """Create the folder ``path`` (and its parents) unless it exists; a link in its place is refused, so the
    files meant for it cannot land elsewhere."""
    path = Path(path)
    refuse_link(path)
    try:
        with writing(path):
            path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):     # a file where the folder (or a parent) should be
        pass
    if not path.is_dir():
        raise WriteError(f"{path} exists and is not a folder (or a file stands in its path): move it away and re-run")
    return path


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


def _no_follow(path, flags: int) -> int:
    """``open(..., opener=_no_follow)``: the flags ``open`` chose, never following a link (``O_EXCL`` already
    refuses one; this also covers modes without it)."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)


def write_file(path: Path, fill: Callable[[HashingSink], object], fsync: bool = True, shown: Path | None = None) -> dict:
    """Create ``path`` exclusively (never through a link), let ``fill`` write it, flush and fsync; return its
    manifest entry. Fails if anything (a file, a link) is already there. ``shown``: the file an error names
    (the final name of a temporary file)."""
    path = Path(path)
    with writing(shown or path):
        try:
            f = open(path, "xb", opener=_no_follow)  # noqa: SIM115 -- closed by the `with` below
        except FileExistsError:
            refuse_link(path)
            raise
        with f:
            sink = HashingSink(f)
            fill(sink)
            f.flush()
            if fsync:
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
    header: dict[str, dict[str, Any]] = {"__metadata__": {"format": "pt"}}
    offset = 0
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


# ----------------------------------------------------------------------------------- whole files, replaced
def replace_durably(path: Path, fill: Callable[[HashingSink], object], fsync: bool = True) -> dict:
    """Write ``path`` through an exclusive, fsynced temporary file in the same folder, then rename it into place
    (and fsync the folder): ``path`` is either the old file or the complete new one, also after a full disk or
    a kill. A link in the place of ``path`` is refused (its target is never touched). ``fsync=False`` (many small
    files, e.g. 50,000 sample PNGs): still atomic and link-safe, but a power cut may lose the newest files."""
    path = Path(path)
    refuse_link(path)
    if path.is_dir():
        raise WriteError(f"{path} is a folder, where jit-vco writes a file: move it away and re-run")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        entry = write_file(tmp, fill, fsync, shown=path)
        with writing(path):
            os.replace(tmp, path)
            if fsync:
                fsync_dir(path.parent)
        return entry
    finally:
        with contextlib.suppress(OSError):    # gone already (renamed), or never created (read-only)
            os.unlink(tmp)


def write_bytes(path: Path, data: bytes, fsync: bool = True) -> dict:
    """Replace ``path`` by ``data`` atomically (:func:`replace_durably`)."""
    return replace_durably(path, lambda sink: sink.write(data), fsync)


def write_text(path: Path, text: str) -> dict:
    """Replace ``path`` by ``text`` (UTF-8) atomically."""
    return write_bytes(path, text.encode())


def write_json(path: Path, obj: Any, *, indent: int | None = 1, default: Callable | None = None,
               sort_keys: bool = False) -> dict:
    """Replace ``path`` by ``obj`` as JSON atomically."""
    return write_text(path, json.dumps(obj, indent=indent, default=default, sort_keys=sort_keys) + "\n")


def _buffered(save: Callable[[io.BytesIO], object]) -> bytes:
    buf = io.BytesIO()
    save(buf)
    return buf.getvalue()


def save_image(path: Path, image, format: str = "PNG", fsync: bool = True) -> Path:  # noqa: A002 -- Pillow's name
    """A Pillow image, encoded in memory, then written atomically (never through a link)."""
    write_bytes(path, _buffered(lambda buf: image.save(buf, format=format)), fsync)
    return Path(path)


def save_figure(path: Path, fig, **kwargs) -> Path:
    """A matplotlib figure (format from the suffix), rendered in memory, then written atomically."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    write_bytes(path, _buffered(lambda buf: fig.savefig(buf, format=fmt, **kwargs)))
    return path


def save_torch(path: Path, obj: Any) -> dict:
    """``torch.save`` streamed into an atomic replacement of ``path``."""
    # torch.save only writes and flushes: the sink's two methods are all of IO[bytes] it uses
    return replace_durably(path, lambda sink: torch.save(obj, cast(IO[bytes], sink)))


def save_npz(path: Path, **arrays) -> Path:
    """``numpy.savez`` streamed into an atomic replacement of ``path`` (the name is kept as given)."""
    import numpy as np
    replace_durably(path, lambda sink: np.savez(sink.f, **arrays))   # zipfile seeks: the file itself, not the hasher
    return Path(path)


def save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict | None = None) -> dict:
    """A safetensors file (with optional string metadata), written atomically."""
    from safetensors.torch import save
    return write_bytes(path, save(dict(tensors), metadata=metadata))


# ----------------------------------------------------------------------------------- a set of files, replaced
_STAGE_PREFIX = ".staging-"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (the owner of a temporary file or staging folder)."""
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


@contextlib.contextmanager
def staged(folder: Path, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """A fresh hidden folder inside ``folder`` to write a set of files into (a report: pages, tables, images).

    Only when the block ends without an error are the files renamed into ``folder``, replacing their previous
    versions (the names in ``last`` last: the page that links to the others). A full disk, an error or a kill
    while writing leaves every previous file whole; the staging folder is removed (a killed writer's, on the
    next call). A link in the place of any file to be replaced is refused before anything is replaced."""
    import shutil
    folder = ensure_dir(Path(folder))
    for old in folder.glob(f"{_STAGE_PREFIX}*"):
        pid = old.name[len(_STAGE_PREFIX):].split("-")[0]
        if old.is_dir() and not old.is_symlink() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    stage = folder / f"{_STAGE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    with writing(folder):     # the error names the folder being written, not the hidden staging folder
        stage.mkdir()
    try:
        yield stage
        names = sorted((p.name for p in stage.iterdir()), key=lambda n: (n in last, last.index(n) if n in last else 0, n))
        for name in names:
            refuse_link(folder / name)
            if (stage / name).is_dir() or (folder / name).is_dir():
                raise WriteError(f"{stage / name}: only files are staged; {folder / name} must not be a folder")
        for name in names:
            with writing(folder / name):
                os.replace(stage / name, folder / name)
        fsync_dir(folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ----------------------------------------------------------------------------------- appends and locks
def _open_regular(path: Path, flags: int, mode: str):
    """``os.open`` with ``O_NOFOLLOW``, checked to be a regular file, as a Python file object."""
    path = Path(path)
    with writing(path):
        try:    # O_NONBLOCK: a fifo in its place must not hang the open (it has no effect on a regular file)
            fd = os.open(path, flags | os.O_NONBLOCK, 0o666)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            fd = None
    if fd is None:
        raise WriteError(f"{path} is not a regular file (a fifo, a device...): move it away and re-run")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WriteError(f"{path} is not a regular file (a fifo, a device...): move it away and re-run")
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def open_append(path: Path, text: bool = True):
    """``path`` opened for appending (created if missing): refused if it is a link or not a regular file."""
    return _open_regular(path, _APPEND, "a" if text else "ab")


def append_text(path: Path, text: str, fsync: bool = False) -> None:
    """Append ``text`` to ``path`` (one ``write`` call: whole lines stay whole), never through a link."""
    with open_append(path, text=False) as f, writing(Path(path)):
        f.write(text.encode())
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def open_lock_file(path: Path):
    """``path`` opened read-write for a lock (created if missing, never emptied here): refused if it is a link
    or not a regular file, so a planted link can neither empty its target nor create a file elsewhere."""
    return _open_regular(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, "r+")


# ----------------------------------------------------------------------------------- paths stored in files
def stored_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """How a file records ``path``: relative to ``root`` (posix) when inside it, so a copied or moved folder keeps
    working; otherwise the absolute path, for display only (nothing is ever written to a path read from a file)."""
    p, r = Path(path).resolve(), Path(root).resolve()
    try:
        return p.relative_to(r).as_posix()
    except ValueError:
        return str(p)
