"""Checkpoints named on the Hugging Face Hub: ``hf://OWNER/REPO[@REVISION]/PATH`` -> a local file.

:func:`fetch` resolves the name through the local Hub cache first (``HF_HOME`` / ``HF_HUB_CACHE``, the
layout ``models--OWNER--REPO/snapshots/<commit>/PATH`` with ``refs/<revision>``), then downloads with
``huggingface_hub.hf_hub_download`` (cached, resumable). Offline (``HF_HUB_OFFLINE=1`` or the Hub
unreachable) a file that is not cached is a :class:`HubError` in one line naming the local-file form.
The file is then read like any local checkpoint (``weights_only=True``): the Hub is only a source of bytes.

A whole repository is named ``hf://OWNER/REPO[@REVISION]`` (:func:`parse_repo`): ``jit push`` uploads a
folder there (:func:`upload`), ``api.load_run`` reads one back (:mod:`jit_core.runs.hubrun`).
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from jit_core.runs.checkpoint import CheckpointError

SCHEME = "hf://"
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REPO_SPEC = re.compile(rf"hf://(?P<owner>{_PART})/(?P<repo>{_PART})(?:@(?P<revision>[^/]+))?/?")
_SPEC = re.compile(rf"hf://(?P<owner>{_PART})/(?P<repo>{_PART})(?:@(?P<revision>[^/]+))?/(?P<path>[^\s]+)")


class HubError(CheckpointError):
    """A Hub name that cannot be resolved to a file; the message says how to pass a local file instead."""


@dataclass(frozen=True)
class HubFile:
    """A parsed ``hf://OWNER/REPO[@REVISION]/PATH``."""

    repo_id: str
    path: str
    revision: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{SCHEME}{self.repo_id}{rev}/{self.path}"


def is_hub_name(text: str | os.PathLike) -> bool:
    return str(text).startswith(SCHEME)


def parse(text: str) -> HubFile:
    """``hf://OWNER/REPO[@REVISION]/PATH``; anything else is a :class:`HubError` showing the form."""
    m = _SPEC.fullmatch(str(text))
    if not m or any(part in ("", ".", "..") for part in m["path"].split("/")):
        raise HubError(f"{text} is not a Hub checkpoint name: use hf://OWNER/REPO/PATH (e.g. "
                       "hf://OWNER/REPO/checkpoint-last.pth, or hf://OWNER/REPO@REVISION/PATH)")
    return HubFile(f"{m['owner']}/{m['repo']}", m["path"], m["revision"])


@dataclass(frozen=True)
class HubRepo:
    """A parsed ``hf://OWNER/REPO[@REVISION]``."""

    repo_id: str
    revision: str | None = None

    def file(self, path: str) -> HubFile:
        return HubFile(self.repo_id, path, self.revision)

    def __str__(self) -> str:
        return f"{SCHEME}{self.repo_id}{f'@{self.revision}' if self.revision else ''}"


def parse_repo(text: str) -> HubRepo:
    """``hf://OWNER/REPO[@REVISION]`` (a repository, no file path); anything else is a :class:`HubError`."""
    m = _REPO_SPEC.fullmatch(str(text))
    if not m:
        raise HubError(f"{text} is not a Hub repository name: use hf://OWNER/REPO (or hf://OWNER/REPO@REVISION)")
    return HubRepo(f"{m['owner']}/{m['repo']}", m["revision"])


def upload(folder: Path, repo: HubRepo, message: str, private: bool = False) -> str:
    """Upload every file of ``folder`` to ``repo`` (created if missing); the commit's URL. Offline, or on any
    Hub failure, a :class:`HubError` in one line."""
    reason = _offline_reason()
    if reason:
        raise HubError(f"cannot push to {repo}: the Hub cannot be reached ({reason}); write the files with "
                       f"--stage DIR and upload DIR later (hf upload {repo.repo_id} DIR)")
    try:
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo(repo.repo_id, exist_ok=True, private=private)
        if repo.revision:
            api.create_branch(repo.repo_id, branch=repo.revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), revision=repo.revision,
                                 commit_message=message)
    except Exception as e:  # noqa: BLE001 -- authentication, network and Hub failures: one line each
        first = (str(e).strip().splitlines() or [""])[0]
        raise HubError(f"cannot push to {repo} ({type(e).__name__}: {first}); log in with `hf auth login` "
                       "or write the files with --stage DIR and upload them later") from e
    return str(getattr(info, "commit_url", info))


def _local_form(name: HubFile) -> str:
    return (f"download {name.path} from https://huggingface.co/{name.repo_id} by other means and pass the "
            f"local file instead: jit convert /path/to/{Path(name.path).name} OUT_DIR")


def _offline_reason() -> str | None:
    """Why the Hub is certainly unreachable (None if it may be reachable): saves the minute of retries
    a download attempt spends on a machine without network."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None   # a proxy may reach the Hub where a direct connection cannot
    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    try:
        socket.create_connection((host, url.port or (80 if url.scheme == "http" else 443)), timeout=3).close()
    except OSError as e:
        return f"cannot reach {host}: {e}"
    return None


def fetch(text: str) -> Path:
    """The local path of the Hub file ``text`` names: the cached copy, else a download into the cache."""
    name = parse(text)
    try:
        from huggingface_hub import errors, hf_hub_download, try_to_load_from_cache
    except ImportError as e:
        raise HubError(f"{name} needs huggingface_hub: pip install huggingface_hub (or {_local_form(name)})") from e
    cached = try_to_load_from_cache(name.repo_id, name.path, revision=name.revision)
    if isinstance(cached, str):
        return Path(cached)
    reason = _offline_reason()
    if reason:
        from huggingface_hub import constants
        raise HubError(f"{name} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot be "
                       f"reached ({reason}): {_local_form(name)}")
    try:
        return Path(hf_hub_download(name.repo_id, name.path, revision=name.revision))
    except errors.LocalEntryNotFoundError as e:   # the Hub went away during the attempt and no cached copy
        raise HubError(f"{name} is not in the Hugging Face cache and the Hub could not be reached: "
                       f"{_local_form(name)}") from e
    except errors.RepositoryNotFoundError as e:   # also gated / private repositories without a token
        raise HubError(f"{name}: repository {name.repo_id} not found on the Hub (or it is private or gated: "
                       "log in with `hf auth login`)") from e
    except errors.RevisionNotFoundError as e:
        raise HubError(f"{name}: revision {name.revision} not found in {name.repo_id}") from e
    except errors.EntryNotFoundError as e:
        raise HubError(f"{name}: no file {name.path} in {name.repo_id}") from e
    except Exception as e:  # noqa: BLE001 -- network and Hub failures of many kinds, one line each
        first = (str(e).strip().splitlines() or [""])[0]
        raise HubError(f"{name} could not be downloaded ({type(e).__name__}: {first}): {_local_form(name)}") from e
