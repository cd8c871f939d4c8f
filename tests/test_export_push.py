"""Interop round trips: `jit export` -> `jit convert` gives the same network; `jit push --stage` -> a Hub cache
-> `api.load_run("hf://...")` gives the same network; pushing offline is one line.

The Hub side goes through a real Hugging Face cache on disk, written the way huggingface_hub writes it
(as tests/test_hub_convert.py does for `jit convert hf://`), with HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import jit_core.cli as jit_cli
from jit_core import api
from jit_core.testing import train_tiny

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_thread):
    # fast attention: the default that `jit convert` writes into config.json, so both sides compute alike
    result, _ = train_tiny(tmp_path_factory.mktemp("export"), steps=3, train__attention="fast")
    return result.run_dir


def _invoke(*args):
    return CliRunner().invoke(jit_cli.cli, [str(a) for a in args])


def _outputs(run) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    cfg = run.model.cfg
    z = torch.randn(4, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    with torch.no_grad():
        return run.model(z, torch.rand(4, generator=gen), torch.tensor([0, 1, 2, 3]))


def _pixel(out):
    return out.pixel     # JiTOutput: the pixel stream's x-prediction


def test_export_then_convert_gives_identical_weights_and_outputs(tiny_run, tmp_path):
    done = _invoke("export", tiny_run, tmp_path / "checkpoint-last.pth")
    assert done.exit_code == 0, done.output
    assert "official layout" in done.output
    again = _invoke("export", tiny_run, tmp_path / "checkpoint-last.pth")       # never replaced silently
    assert again.exit_code == 1 and "exists" in again.output and len(again.output.strip().splitlines()) == 1
    converted = _invoke("convert", tmp_path / "checkpoint-last.pth", tmp_path / "imported")
    assert converted.exit_code == 0, converted.output
    for ema in ("model", "ema1", "ema2"):
        ours, back = api.load_run(tiny_run, ema=ema), api.load_run(tmp_path / "imported", ema=ema)
        a, b = ours.model.state_dict(), back.model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), ema
        assert torch.equal(_pixel(_outputs(ours)), _pixel(_outputs(back))), ema


def _hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Every file of ``folder`` as ``repo_id`` at ``main`` in a Hub cache laid out as huggingface_hub writes it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for source in sorted(folder.iterdir()):
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        snap = repo / "snapshots" / COMMIT / source.name
        snap.parent.mkdir(parents=True, exist_ok=True)
        snap.symlink_to(os.path.relpath(blob, snap.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)


def test_push_stage_then_load_from_the_hub_cache(tiny_run, tmp_path, monkeypatch):
    staged = tmp_path / "staged"
    done = _invoke("push", tiny_run, "hf://jit-test/tiny-run", "--stage", staged)
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in staged.iterdir()) == ["README.md", "checkpoint-last.pth", "config.json",
                                                          "jit-run.json"]
    card = (staged / "README.md").read_text()
    assert "license: mit" in card and "**3 steps**" in card and 'api.load_run("hf://jit-test/tiny-run")' in card
    assert str(tiny_run) not in (staged / "config.json").read_text()     # no local path leaves the machine

    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _hub_cache(tmp_path / "hub", "jit-test/tiny-run", staged)
    pulled, local = api.load_run("hf://jit-test/tiny-run"), api.load_run(tiny_run)
    assert pulled.step == local.step == 3
    assert torch.equal(_pixel(_outputs(pulled)), _pixel(_outputs(local)))
    images = api.generate(pulled, torch.arange(2), steps=2, seed=0)
    assert torch.equal(images, api.generate(local, torch.arange(2), steps=2, seed=0))

    with pytest.raises(Exception, match="not in the Hugging Face cache"):
        api.load_run("hf://jit-test/other-run")


def test_push_offline_is_one_line_and_stage_refuses_a_used_folder(tiny_run, tmp_path):
    done = _invoke("push", tiny_run, "hf://jit-test/tiny-run")
    lines = [line for line in done.output.splitlines() if line.strip()]
    assert done.exit_code == 1 and len(lines) == 1, done.output
    assert "cannot push to hf://jit-test/tiny-run" in lines[0] and "HF_HUB_OFFLINE is set" in lines[0]
    assert "--stage DIR" in lines[0]
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    refused = _invoke("push", tiny_run, "hf://jit-test/tiny-run", "--stage", tmp_path / "used")
    assert refused.exit_code == 1 and "must be new or empty" in refused.output
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"
    bad = _invoke("push", tiny_run, "hf://jit-test")
    assert bad.exit_code == 1 and "use hf://OWNER/REPO" in bad.output
