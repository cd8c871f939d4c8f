"""Exact resume with every shipped plugin (tests.fault_tools.SHIPPED_PLUGINS: JiT alone, V-Co, the REPA example).

A run is SIGKILLed during step 6 (after its step-5 checkpoint), then ``jit train --resume`` continues it in a
fresh process to step 10; an uninterrupted 10-step run, also its own process, is the reference. Every logged
loss term and every saved tensor (model, both EMAs, plugin modules) must be bit-identical. Fresh processes
matter: a plugin that builds something random lazily (V-Co's frozen encoder once did, on the first step)
shifts the restored RNG only in a process whose caches are empty.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from safetensors.torch import load_file

from . import fault_tools as ft

STEPS, KILL_AT = 10, 6


def _overrides(name: str) -> list[str]:
    return ft.folder_overrides(STEPS, train__ckpt_every=5, train__log_every=1) + list(ft.SHIPPED_PLUGINS[name][1])


def _plugin_args(name: str) -> list[str]:
    return [arg for p in ft.SHIPPED_PLUGINS[name][0] for arg in ("--plugin", p)]


def _run(cmd: list[str], log) -> int:
    return subprocess.run(cmd, env=ft.plugin_env(), cwd=ft.REPO, stdout=log, stderr=subprocess.STDOUT,
                          timeout=600).returncode


def _saved(ckpt) -> dict:
    return {f.name: load_file(str(f)) for f in sorted(ckpt.glob("*.safetensors"))}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ft.SHIPPED_PLUGINS))
def test_killed_after_the_step_5_checkpoint_resumes_bit_identically(name, tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "run"
    with open(tmp_path / "straight.log", "w+") as log:
        rc = _run(ft.jit_cmd("train", "--preset", "test", *_plugin_args(name), "--run-dir", str(straight),
                             *_overrides(name)), log)
        assert rc == 0, (tmp_path / "straight.log").read_text()[-3000:]
    with open(tmp_path / "killed.log", "w+") as log:
        plugins = ",".join(ft.SHIPPED_PLUGINS[name][0]) or "-"
        rc = _run([sys.executable, "-m", "tests.fault_tools", "die-at", str(KILL_AT), str(run), "test", plugins,
                   *_overrides(name)], log)
    assert rc == -9, (tmp_path / "killed.log").read_text()[-3000:]
    assert ft.latest_step(run) == 5
    with open(tmp_path / "resumed.log", "w+") as log:
        rc = _run(ft.jit_cmd("train", "--resume", str(run)), log)
    output = (tmp_path / "resumed.log").read_text()
    assert rc == 0 and "resumed from" in output, output[-3000:]

    ours, theirs = ft.read_metrics(run), ft.read_metrics(straight)
    assert [m["step"] for m in theirs] == list(range(1, STEPS + 1))
    losses = [{k: v for k, v in m.items() if k.startswith("loss")} for m in ours]
    assert losses == [{k: v for k, v in m.items() if k.startswith("loss")} for m in theirs]
    assert len(losses[0]) >= 2 if ft.SHIPPED_PLUGINS[name][0] else True   # the plugin's own term is compared too
    a, b = _saved(ft.step_dir(run, STEPS)), _saved(ft.step_dir(straight, STEPS))
    assert a.keys() == b.keys() and {"model.safetensors", "ema1.safetensors", "ema2.safetensors"} <= a.keys()
    for fname in a:
        assert a[fname].keys() == b[fname].keys(), fname
        differ = [k for k in a[fname] if not a[fname][k].equal(b[fname][k])]
        assert not differ, f"{fname}: {len(differ)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"


def test_forked_rng_leaves_every_global_rng_as_it_found_it():
    """Draws inside the block (torch, Python, NumPy), even one ending in an error, move no global RNG."""
    import random

    import numpy as np
    import torch

    from jit_core.rng import forked_rng
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    expected = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    with pytest.raises(RuntimeError), forked_rng():
        torch.nn.Linear(4, 4), torch.randn(8), random.random(), np.random.rand(3)
        raise RuntimeError("set-up failed")
    after = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]
