"""The in-repository copy of the official parity fixtures: within its budget, self-checking, and exactly what
``scripts/compact_official_fixtures.py`` makes of the full fixture folders."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from .official_fixtures import COMPACT_DIR, Compact, compact

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compact_official_fixtures.py"
# bytes, the whole folder: 15 MB for the JiT and V-Co fixtures, raised to 25 MB for the weights of V-Co's five
# architecture variants (vco_arch, 10.2 MB; float32 weights are what the parity tests need)
BUDGET = 25_000_000


def test_compact_copy_fits_its_budget_and_its_readme_names_every_file():
    files = sorted(p for p in COMPACT_DIR.iterdir() if p.is_file())
    assert sum(p.stat().st_size for p in files) <= BUDGET
    readme = (COMPACT_DIR / "README.md").read_text()
    for p in files:
        if p.name != "README.md":
            assert f"`{p.name}`" in readme, p.name


def test_derived_tensors_regenerate_and_a_wrong_recipe_is_refused(tmp_path):
    for name, keys in (("vco_tiny", ("io/z", "io/zs")), ("vco_train", ("noise", "noise_f"))):
        fx = compact(name)
        for key in keys:
            value = fx[key]                       # regenerated, checked against the stored values
            assert value.dtype == torch.float32 and tuple(value.shape) == tuple(fx.meta["derived"][key]["shape"])
    # a recipe that does not give the stored values is refused, not used
    src = COMPACT_DIR / "vco_train.safetensors"
    from safetensors import safe_open
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    meta["meta"] = meta["meta"].replace('"seed": 7', '"seed": 8')
    save_file(load_file(str(src)), str(tmp_path / "vco_train.safetensors"), metadata=meta)
    with pytest.raises(AssertionError, match="other normals for 'noise'"):
        Compact("vco_train", tmp_path)["noise"]


def test_rebuilt_checkpoints_have_the_official_ema_offsets():
    for name in ("jit_tiny", "vco_tiny"):
        ckpt = compact(name).checkpoint()
        assert list(ckpt) == compact(name).meta["checkpoint_order"] and ckpt["args"] is None
        frozen = set(compact(name).meta["frozen"])
        assert "net.pos_embed" in frozen
        for key, weight in ckpt["model"].items():
            if key not in frozen:
                assert torch.equal(ckpt["model_ema1"][key], weight + 0.001)
                assert torch.equal(ckpt["model_ema2"][key], weight - 0.001)


def test_compaction_script_refuses_a_folder_without_the_fixtures(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("compact_official_fixtures", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as stop:
        script.main([str(tmp_path), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2 and "lacks official_jit_tiny" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compaction_script_rebuilds_the_committed_copy(full_fixtures_dir, tmp_path):
    """With the full fixture folders: the script's output is the committed copy, byte for byte. Without them (a
    plain clone), the committed files are in the script's own serialisation: read and written again, the same bytes."""
    names = sorted(p.name for p in COMPACT_DIR.iterdir() if p.suffix in (".safetensors", ".json"))
    if full_fixtures_dir is not None:
        done = subprocess.run([sys.executable, str(SCRIPT), str(full_fixtures_dir), "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == names
        for name in names:
            assert (tmp_path / name).read_bytes() == (COMPACT_DIR / name).read_bytes(), name
        return
    from safetensors import safe_open
    for name in names:
        if name.endswith(".safetensors") and not name.startswith("dinov2"):
            with safe_open(str(COMPACT_DIR / name), framework="pt") as f:
                meta = f.metadata()
            save_file(load_file(str(COMPACT_DIR / name)), str(tmp_path / name), metadata=meta)
            assert (tmp_path / name).read_bytes() == (COMPACT_DIR / name).read_bytes(), name
