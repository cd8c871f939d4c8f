"""A run folder is untrusted input: nothing in it is evaluated or imported (issue: run folders can run code).

Both payloads are the real attacks: a ``trainer.pt`` whose Python RNG state is a string that runs
``os.system`` through ``().__class__.__base__.__subclasses__()`` (manifest re-hashed so the checkpoint
verifies), and a ``config.json`` naming a ``.py`` plugin that would write a marker file when imported.
"""
from __future__ import annotations

import hashlib
import json
import random
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import jit_core.cli as jit_cli
from jit_core import api
from jit_core.plugins import PluginError
from jit_core.testing import train_tiny
from jit_core.training import rng_state, set_rng_state


def _rehash(ckpt_dir: Path, fname: str) -> None:
    """What an attacker does after editing a file: make the manifest match it again."""
    manifest = json.loads((ckpt_dir / "manifest.json").read_text())
    data = (ckpt_dir / fname).read_bytes()
    manifest["files"][fname] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt_dir / "manifest.json").write_text(json.dumps(manifest))


def _invoke(*args):
    jit_cli._add_optional_commands()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(jit_cli.cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("untrusted"), steps=2)[0].run_dir


def _copy(run: Path, dst: Path) -> Path:
    import shutil
    return Path(shutil.copytree(run, dst))


def test_rng_state_is_data_and_round_trips():
    random.seed(123)
    state = rng_state()
    assert isinstance(state["python"], dict) and isinstance(state["python"]["state"], torch.Tensor)
    expected = [random.random() for _ in range(5)]
    set_rng_state(state)
    assert [random.random() for _ in range(5)] == expected


def test_legacy_rng_repr_is_parsed_not_evaluated():
    random.seed(7)
    legacy = dict(rng_state(), python=repr(random.getstate()))
    expected = [random.random() for _ in range(3)]
    set_rng_state(legacy)
    assert [random.random() for _ in range(3)] == expected


def test_resume_refuses_code_in_trainer_pt(run, tmp_path):
    victim = _copy(run, tmp_path / "victim")
    marker = tmp_path / "pwned"
    payload = ("[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'catch_warnings'][0]()"
               f"._module.os.system('touch {marker}')")
    last = sorted((victim / "checkpoints").glob("step-*"))[-1]
    state = torch.load(last / "trainer.pt", weights_only=True)
    state["rng"]["python"] = payload
    torch.save(state, last / "trainer.pt")
    _rehash(last, "trainer.pt")
    result = _invoke("train", "--resume", victim, "train.max_steps=3")
    assert result.exit_code != 0
    assert not marker.exists(), "the payload ran"
    assert "malformed RNG state" in result.output and "trainer.pt" in result.output
    assert "Traceback" not in result.output


def _evil_plugin(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "imported"
    evil = tmp_path / "evil_plugin.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return evil, marker


def _with_plugin(run: Path, dst: Path, plugin: str) -> Path:
    victim = _copy(run, dst)
    cfg = json.loads((victim / "config.json").read_text())
    cfg["plugins"] = [plugin]
    (victim / "config.json").write_text(json.dumps(cfg))
    return victim


@pytest.mark.parametrize("command", [
    ("sample", "{run}", "--out", "{tmp}/s"),
    ("train", "--resume", "{run}", "train.max_steps=3"),
    ("compare", "{run}", "--out", "{tmp}/report"),
    ("evaluate", "{run}", "--num-images", "4", "--metrics", "none", "--save", "none"),
])
def test_run_folder_plugin_module_is_not_imported(run, tmp_path, command):
    evil, marker = _evil_plugin(tmp_path)
    victim = _with_plugin(run, tmp_path / "victim", str(evil))
    args = [a.format(run=victim, tmp=tmp_path) for a in command]
    result = _invoke(*args)
    assert result.exit_code != 0, result.output
    assert not marker.exists(), "the run folder's plugin module was imported"
    last = result.output.strip().splitlines()[-1]
    assert "evil_plugin.py" in last and "--plugin" in last and "--trust-plugins" in last, result.output
    assert "Traceback" not in result.output


def test_named_plugin_module_is_trusted(run, tmp_path):
    evil, marker = _evil_plugin(tmp_path)
    victim = _with_plugin(run, tmp_path / "victim", str(evil))
    with pytest.raises(PluginError):
        api.load_run_config(victim)
    api.load_run_config(victim, trust_plugins=[str(evil)])     # named by the user: allowed (not imported yet)
    api.load_run_config(victim, trust_plugins=True)
    assert not marker.exists()
