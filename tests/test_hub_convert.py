"""``jit convert hf://OWNER/REPO/PATH OUT``: through a real Hugging Face cache on disk, offline.

The cache is built the way ``huggingface_hub`` writes it (``models--OWNER--REPO/blobs/<sha256>``,
``snapshots/<commit>/PATH`` -> the blob, ``refs/main`` = the commit) and the command runs in a fresh
process with ``HF_HOME`` / ``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1``, as a user would.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jit_core.runs import hub
from jit_core.runs.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(home: Path, repo_id: str, path: str, source: Path) -> Path:
    """A Hub cache under ``home`` holding ``source`` as ``repo_id``'s file ``path`` at ``main``."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    data = source.read_bytes()
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    snap = repo / "snapshots" / COMMIT / path
    snap.parent.mkdir(parents=True)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return home


def jit(*args, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "jit_core", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_convert_by_hub_name_from_the_cache_offline_and_the_offline_refusal(tmp_path, official_checkpoint):
    source = official_checkpoint("jit_tiny")
    home = hub_cache(tmp_path / "hf", "jit-test/JiT-T4", "official/checkpoint-last.pth", source)
    out = tmp_path / "run"
    done = jit("convert", "hf://jit-test/JiT-T4/official/checkpoint-last.pth", str(out), home=home)
    assert done.returncode == 0, done.stderr
    assert "converted hf://jit-test/JiT-T4/official/checkpoint-last.pth (jit layout, epoch 3)" in done.stdout
    _, state = load_checkpoint(out)
    assert state["source"]["hub"] == "hf://jit-test/JiT-T4/official/checkpoint-last.pth"
    assert state["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert state["source"]["path"].startswith(str(home / "hub" / "models--jit-test--JiT-T4"))   # the cached copy
    assert json.loads((out / "config.json").read_text())["model"] == "JiT-T/4"

    missing = jit("convert", "hf://jit-test/JiT-T4/other/checkpoint-last.pth", str(tmp_path / "b"), home=home)
    assert missing.returncode != 0
    lines = [line for line in (missing.stdout + missing.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), lines
    assert "not in the Hugging Face cache" in lines[0] and "HF_HUB_OFFLINE is set" in lines[0]
    assert "jit convert /path/to/checkpoint-last.pth OUT_DIR" in lines[0]
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("text", ["hf://owner/checkpoint-last.pth", "hf://owner/repo/", "hf://owner/repo/../x.pth",
                                  "hf:/owner/repo/x.pth"])
def test_bad_hub_names_show_the_form(text):
    with pytest.raises(hub.HubError, match="use hf://OWNER/REPO/PATH"):
        hub.parse(text)


def test_hub_name_with_a_revision():
    name = hub.parse("hf://Owner/Repo.v2@v1.0/sub/dir/checkpoint-last.pth")
    assert (name.repo_id, name.revision, name.path) == ("Owner/Repo.v2", "v1.0", "sub/dir/checkpoint-last.pth")
    assert str(name) == "hf://Owner/Repo.v2@v1.0/sub/dir/checkpoint-last.pth"
