"""Checkpoints: atomic save/load, corruption fallback, disk full, retention, official import/export, `jit convert`."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from jit_core import durable
from jit_core.model import JiT, ModelConfig, build_model
from jit_core.model.streams import Stream, pixel_stream
from jit_core.official.infer import infer_model_config
from jit_core.official.layout import export_official, import_official
from jit_core.runs.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from jit_core.runs.compat import check_compatible
from jit_core.runs.convert import convert_command
from jit_core.runs.loading import load_weights

from .official_fixtures import compact

TINY = ModelConfig(image_size=32, patch_size=4, hidden_size=64, depth=3, num_heads=4, bottleneck_dim=16,
                   in_context_len=4, in_context_start=1, num_classes=10)
VCO = dataclasses.replace(TINY, image_size=256, patch_size=16)
DROPPED = ("img_mean", "img_std", "drifting_dinov2.", "net.x_embedder.dinov2.")


def vco_model() -> JiT:
    return JiT(VCO, [pixel_stream(), Stream("feature", "tokens", 768, default_init=True)])


def small(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {"a.weight": torch.randn(8, 8, generator=g), "b.bias": torch.randn(8, generator=g)}
    return {"model": sd, "ema1": {k: v + 1 for k, v in sd.items()}, "ema2": {k: v - 1 for k, v in sd.items()}}


def steps(run: Path) -> list[int]:
    return [int(p.name[5:]) for p in list_checkpoints(run)]


def pointer(run: Path) -> str:
    return (run / "checkpoints" / "latest").read_text().strip()


def leftovers(run: Path) -> list[str]:
    return [p.name for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name or ".old-" in p.name
            or ".del-" in p.name]


# ------------------------------------------------------------------------------------------ round trip
def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = JiT(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    for p in model.parameters():
        p.grad = torch.randn_like(p) if p.requires_grad else None
    opt.step()
    aux = {"bf16": torch.randn(3, 5).bfloat16(), "mask": torch.rand(7) > 0.5, "scalar": torch.tensor(3.5).double(),
           "empty": torch.zeros(0, 4), "transposed": torch.arange(12.0).view(3, 4).t(), "i64": torch.arange(5)}
    sd = model.state_dict()
    weights = {"model": sd, "ema1": {k: v * 0.5 for k, v in sd.items()}, "ema2": {k: v - 1 for k, v in sd.items()},
               "aux": aux}
    state = {"optimizer": opt.state_dict(), "step": 1, "epoch": 0, "rng": {"torch": torch.get_rng_state()},
             "sampler": {"position": 17, "order": [3, 1, 2]},
             "config": {"model": "JiT-T/4", "betas": (0.9, 0.95), "lr": None, "flip": True}}

    path = save_checkpoint(tmp_path, 1, weights, state)
    assert path == tmp_path / "checkpoints" / "step-00000001" and pointer(tmp_path) == path.name
    assert sorted(p.name for p in path.iterdir()) == ["aux.safetensors", "ema1.safetensors", "ema2.safetensors",
                                                      "manifest.json", "model.safetensors", "trainer.pt"]
    loaded, restored = load_checkpoint(tmp_path)  # a run dir resolves to its latest checkpoint
    for name, expected in weights.items():
        assert list(loaded[name]) == list(expected)
        for key, value in expected.items():
            got = loaded[name][key]
            assert got.dtype == value.dtype and got.shape == value.shape and torch.equal(got, value), (name, key)
    assert torch.equal(load_file(path / "aux.safetensors")["bf16"], aux["bf16"])  # plain safetensors files
    assert torch.equal(load_weights(path, "ema2")["pos_embed"], weights["ema2"]["pos_embed"])
    assert torch.equal(load_weights(path / "ema1.safetensors")["in_context_posemb"], weights["ema1"]["in_context_posemb"])

    raw = torch.load(path / "trainer.pt", weights_only=True)
    assert raw["sampler"] == state["sampler"] and raw["config"] == state["config"]
    assert torch.equal(restored["rng"]["torch"], state["rng"]["torch"])
    opt2 = torch.optim.AdamW(JiT(TINY).parameters(), lr=0.5)
    opt2.load_state_dict(restored["optimizer"])
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a["state"][i][k], b["state"][i][k])

    manifest = verify_checkpoint(path)
    assert manifest["format"] == "jit-vco/1" and manifest["step"] == 1
    for fname, info in manifest["files"].items():
        data = (path / fname).read_bytes()
        assert info == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_state_that_weights_only_cannot_load_is_refused_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\['config'\]\['data'\] is a pathlib.*PosixPath.*str for paths"):
        save_checkpoint(tmp_path, 1, small(), {"config": {"data": Path("/data")}})
    assert not (tmp_path / "checkpoints").exists()


# ------------------------------------------------------------------------------------------ official fixtures
# official checkpoint files rebuilt from the in-repository compact copy (tests/fixtures/official)
def test_official_jit_fixture_parity(official_checkpoint):
    imported = import_official(official_checkpoint("jit_tiny"))
    assert imported["layout"] == "jit" and imported["epoch"] == 3
    fx = compact("jit_tiny")
    model = JiT(TINY).eval()
    for which, key in (("model", "io/x_pred"), ("ema1", "io/x_pred_ema1")):
        check_compatible(imported[which], model, which)
        model.load_state_dict(imported[which], strict=True)
        with torch.no_grad():
            out = model(fx["io/z"], fx["io/t"], fx["io/y"]).pixel
        fx.check(out, key, rtol=0, atol=1e-5)
    delta = imported["ema2"]["in_context_posemb"] - imported["model"]["in_context_posemb"]
    torch.testing.assert_close(delta, torch.full_like(delta, -0.001))


def test_official_vco_fixture_parity(official_checkpoint):
    imported = import_official(official_checkpoint("vco_tiny"))
    assert imported["layout"] == "vco" and imported["epoch"] == 7
    fx = compact("vco_tiny")
    model = vco_model().eval()
    model.load_state_dict(imported["model"], strict=True)
    inputs = {"pixel": fx["io/z"], "feature": fx["io/zs"]}
    blocked = torch.zeros(len(fx["io/t"]), 2, 2, dtype=torch.bool)
    blocked[:, 0, 1] = fx["io/drop"]
    with torch.no_grad():
        plain = model(inputs, fx["io/t"], fx["io/y"]).x_hat
        dropped = model(inputs, fx["io/t"], fx["io/y_drop"], blocked).x_hat
    for out, suffix, rows in ((plain, "", (0, 1)), (dropped, "_drop", (0,))):   # dropped row 1 = plain row 1
        for row in rows:
            fx.check(out["pixel"][row], f"io/x_pred{suffix}/{row}", rtol=0, atol=1e-5)
            fx.check(out["feature"][row], f"io/f_pred{suffix}/{row}", rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["jit_tiny", "vco_tiny"])
def test_official_layout_round_trip(tmp_path, name, official_checkpoint):
    source = official_checkpoint(name)
    imported = import_official(source)
    export_official(imported, tmp_path / "out.pth", epoch=imported["epoch"])
    original = torch.load(source, weights_only=True)
    exported = torch.load(tmp_path / "out.pth", weights_only=True)
    assert exported["optimizer"] == {} and exported["args"] is None and exported["epoch"] == imported["epoch"]
    for key in ("model", "model_ema1", "model_ema2"):
        expected = [k for k in original[key] if not k.startswith(DROPPED)]
        assert set(exported[key]) == set(expected)
        for k in expected:
            assert torch.equal(exported[key][k], original[key][k]), (key, k)
    again = import_official(tmp_path / "out.pth")
    assert again["layout"] == imported["layout"]
    for which in ("model", "ema1", "ema2"):
        assert again[which].keys() == imported[which].keys()
        assert all(torch.equal(again[which][k], v) for k, v in imported[which].items())


def test_official_args_namespace_is_allowed(tmp_path):
    weights = {"model": JiT(TINY).state_dict()}
    export_official(weights, tmp_path / "a.pth", epoch=5)
    ck = torch.load(tmp_path / "a.pth", weights_only=True)
    ck["args"] = argparse.Namespace(model="JiT-T/4", lr=1e-4, epochs=600)
    torch.save(ck, tmp_path / "a.pth")
    imported = import_official(tmp_path / "a.pth")
    assert imported["epoch"] == 5 and imported["layout"] == "jit"
    assert all(torch.equal(imported["ema1"][k], v) for k, v in weights["model"].items())


def test_convert_command_jit(tmp_path, official_checkpoint):
    source = official_checkpoint("jit_tiny")
    out = tmp_path / "run"
    result = CliRunner().invoke(convert_command(), [str(source), str(out), "--check-config", "JiT-T/4"])
    assert result.exit_code == 0, result.output
    assert "jit layout, epoch 3" in result.output and "259,340 trainable" in result.output

    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "JiT-T/4" and config["model_overrides"] == {} and config["data"]["image_size"] == 32
    weights, state = load_checkpoint(out)
    assert state["step"] == 0 and state["epoch"] == 3 and state["optimizer"] == {}
    assert state["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert ModelConfig(**infer_model_config(weights["model"])) == TINY

    fx = compact("jit_tiny")
    model = build_model(config["model"], **config["model_overrides"]).eval()
    model.load_state_dict(load_weights(out, "ema1"), strict=True)
    with torch.no_grad():
        fx.check(model(fx["io/z"], fx["io/t"], fx["io/y"]).pixel, "io/x_pred_ema1", rtol=0, atol=1e-5)

    again = CliRunner().invoke(convert_command(), [str(source), str(out)])
    assert again.exit_code != 0 and "already holds a run" in again.output
    wrong = CliRunner().invoke(convert_command(), [str(source), str(tmp_path / "b"), "--check-config", "JiT-B/16"])
    assert wrong.exit_code != 0 and "pos_embed has shape [1, 256, 768] here but [1, 64, 64] in the file" in wrong.output
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_convert_command_vco(tmp_path, official_checkpoint):
    source = official_checkpoint("vco_tiny")
    result = CliRunner().invoke(convert_command(), [str(source), str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "vco layout, epoch 7" in result.output and "feature (768 ch)" in result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model_overrides"] == {"image_size": 256, "patch_size": 16} and config["plugins"] == ["vco"]
    sd = load_weights(tmp_path / "run", "model")
    assert ModelConfig(**infer_model_config(sd)) == VCO
    vco_model().load_state_dict(sd, strict=True)


def test_infer_model_config_needs_in_context_start_for_unknown_depths():
    sd = JiT(dataclasses.replace(TINY, depth=5, in_context_start=3)).state_dict()
    with pytest.raises(CheckpointError, match="in_context_start"):
        infer_model_config(sd)
    cfg = infer_model_config(sd, in_context_start=3)
    assert cfg["depth"] == 5 and cfg["num_heads"] == 4 and cfg["in_context_len"] == 4 and cfg["num_classes"] == 10


# ------------------------------------------------------------------------------------------ corruption
@pytest.fixture
def two(tmp_path) -> Path:
    for step in (100, 200):
        save_checkpoint(tmp_path, step, small(step), {"step": step}, keep_last=5)
    return tmp_path


def _falls_back(run: Path, bad_name: str, caplog) -> None:
    with pytest.warns(UserWarning, match=bad_name.replace(".", r"\.")), caplog.at_level(logging.WARNING):
        assert latest_checkpoint(run) == run / "checkpoints" / "step-00000100"
    assert bad_name in caplog.text


def test_truncated_file_falls_back(two, caplog):
    bad = two / "checkpoints" / "step-00000200" / "ema1.safetensors"
    with open(bad, "r+b") as f:
        f.truncate(10)
    _falls_back(two, "ema1.safetensors", caplog)
    with pytest.raises(CorruptCheckpointError, match="ema1.safetensors has 10 bytes"):
        load_checkpoint(bad.parent)
    with pytest.warns(UserWarning, match="ema1"):
        assert torch.equal(load_checkpoint(two)[0]["model"]["b.bias"], small(100)["model"]["b.bias"])


def test_flipped_byte_is_caught_by_the_hash(two, caplog):
    bad = two / "checkpoints" / "step-00000200" / "model.safetensors"
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    verify_checkpoint(bad.parent, verify_hash=False)  # same size: only the hash sees it
    _falls_back(two, "model.safetensors", caplog)


def test_missing_manifest_falls_back(two, caplog):
    (two / "checkpoints" / "step-00000200" / "manifest.json").unlink()
    _falls_back(two, "manifest.json", caplog)


def test_garbage_latest_pointer(two):
    latest = two / "checkpoints" / "latest"
    for garbage in (b"\x00\xff garbage", b"../../etc", b"step-00000999\n", b""):
        latest.write_bytes(garbage)
        assert latest_checkpoint(two) == two / "checkpoints" / "step-00000200"
    latest.unlink()
    assert latest_checkpoint(two) == two / "checkpoints" / "step-00000200"


def test_no_checkpoint_and_all_corrupt(tmp_path, two):
    assert latest_checkpoint(tmp_path / "empty") is None
    for step in ("step-00000100", "step-00000200"):
        (two / "checkpoints" / step / "trainer.pt").unlink()
    with pytest.warns(UserWarning), pytest.raises(CorruptCheckpointError, match="none of the 2 checkpoints"):
        latest_checkpoint(two)


# ------------------------------------------------------------------------------------------ disk full
def test_disk_full_leaves_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 100, small(1), {"step": 100})
    real_write, count = durable.HashingSink.write, [0]

    def counting(self, data):
        count[0] += 1
        return real_write(self, data)

    monkeypatch.setattr(durable.HashingSink, "write", counting)
    save_checkpoint(tmp_path / "probe", 1, small(), {"step": 1})
    total = count[0]  # writes of one save; the last is `latest`, the one before it manifest.json

    for step in (200, 100):  # a new step, and a re-save of the existing one
        for fail_at in (1, 3, total - 1, total):
            count[0] = 0

            def full(self, data, fail_at=fail_at):
                count[0] += 1
                if count[0] >= fail_at:
                    real_write(self, bytes(memoryview(data).cast("B"))[:3])  # a partial write, then the error
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real_write(self, data)

            monkeypatch.setattr(durable.HashingSink, "write", full)
            with pytest.raises(CheckpointError, match="disk full while writing checkpoint") as err:
                save_checkpoint(tmp_path, step, small(2), {"step": step})
            assert "step-00000100 is intact" in str(err.value) and "free space in" in str(err.value)
            monkeypatch.setattr(durable.HashingSink, "write", real_write)
            assert steps(tmp_path) == [100] and pointer(tmp_path) == "step-00000100"
            assert leftovers(tmp_path) == [], (step, fail_at)
            verify_checkpoint(tmp_path / "checkpoints" / "step-00000100")
            assert torch.equal(load_weights(tmp_path, "model")["a.weight"], small(1)["model"]["a.weight"])

    save_checkpoint(tmp_path, 200, small(2), {"step": 200})  # space is back: saving works again
    assert steps(tmp_path) == [200] and pointer(tmp_path) == "step-00000200"


# ------------------------------------------------------------------------------------------ retention
def test_retention(tmp_path):
    for step in range(100, 1001, 100):
        save_checkpoint(tmp_path, step, small(), {"step": step}, keep_every=300, keep_last=2)
    assert steps(tmp_path) == [300, 600, 900, 1000]
    save_checkpoint(tmp_path, 1100, small(), {"step": 1100}, keep_every=300, keep_last=2)
    assert steps(tmp_path) == [300, 600, 900, 1000, 1100]
    save_checkpoint(tmp_path, 1200, small(), {"step": 1200})  # defaults: only the newest
    assert steps(tmp_path) == [1200]
    # a run resumed from an earlier checkpoint: later steps are left alone, `latest` follows the new save
    save_checkpoint(tmp_path, 50, small(), {"step": 50})
    assert steps(tmp_path) == [50, 1200]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000050"


def test_resave_same_step_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 100, small(1), {"step": 100})
    save_checkpoint(tmp_path, 100, small(2), {"step": 100})
    assert steps(tmp_path) == [100] and leftovers(tmp_path) == []
    assert torch.equal(load_weights(tmp_path, "ema1")["a.weight"], small(2)["ema1"]["a.weight"])


def test_leftovers_of_crashed_writers_are_cleaned(tmp_path):
    save_checkpoint(tmp_path, 100, small(), {"step": 100})
    root = tmp_path / "checkpoints"
    dead = root / "step-00000200.tmp-99999999"  # beyond any pid_max: not alive
    live = root / f"step-00000300.tmp-{os.getppid()}"
    for d in (dead, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    future = time.time() + 3600
    os.utime(live, (future, future))  # a live writer that started after the newest checkpoint
    os.rename(root / "step-00000100", root / "step-00000100.old-99999999")  # crash between a re-save's renames
    save_checkpoint(tmp_path, 150, small(), {"step": 150}, keep_last=5)
    assert not dead.exists() and live.exists()
    assert steps(tmp_path) == [100, 150]  # the moved-aside checkpoint was restored
    verify_checkpoint(root / "step-00000100")


# ------------------------------------------------------------------------------------------ foreign files
def test_foreign_files_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "dict.pth")
    with pytest.raises(CheckpointError, match=r"dict\.pth is not an official JiT/V-Co checkpoint.*no 'model'"):
        import_official(tmp_path / "dict.pth")
    (tmp_path / "notes.pth").write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError, match=r"not a checkpoint: .*notes\.pth \(torch\.load failed"):
        import_official(tmp_path / "notes.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_weights(tmp_path / "notes.pth")
    torch.save({"model": {"encoder.layer.0.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a JiT/V-Co state dict"):
        import_official(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="official checkpoint not found"):
        import_official(tmp_path / "missing.pth")
    (tmp_path / "dir").mkdir()
    with pytest.raises(CheckpointError, match="neither a checkpoint directory"):
        load_checkpoint(tmp_path / "dir")
    (tmp_path / "dir" / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not a jit-vco checkpoint"):
        load_checkpoint(tmp_path / "dir")


def test_check_compatible_names_key_and_shapes():
    sd = JiT(TINY).state_dict()
    check_compatible(sd, JiT(TINY), "tiny.safetensors")
    bigger = build_model("JiT-S/4")
    with pytest.raises(CheckpointError) as err:
        check_compatible(sd, bigger, "tiny.safetensors")
    msg = str(err.value)
    assert "checkpoint tiny.safetensors is for a different model" in msg
    assert "pos_embed has shape [1, 64, 96] here but [1, 64, 64] in the file" in msg
    assert "blocks.0.streams.pixel.attn.qkv.weight has shape [288, 96] here but [192, 64] in the file" not in msg
    assert "more)" in msg and "missing from the file: blocks.3." in msg and "hidden_size=64" in msg and "config.json" in msg


CALLS: list = []


def _record(value):
    CALLS.append(value)
    return value


class Payload:
    """Unpickling this calls _record: a stand-in for code a malicious checkpoint would run."""

    def __reduce__(self):
        return _record, ("executed",)


def test_non_allowlisted_pickles_are_refused(tmp_path):
    torch.save({"model": {}, "epoch": 1, "args": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.pth.*_record"):
        import_official(tmp_path / "evil.pth")
    path = save_checkpoint(tmp_path / "run", 1, small(), {"step": 1})
    torch.save({"step": 1, "hook": Payload()}, path / "trainer.pt")
    with pytest.raises(CorruptCheckpointError, match="trainer.pt"):
        load_checkpoint(path)  # the manifest notices the swap ...
    with pytest.raises(CheckpointError, match=r"refused to load .*trainer\.pt"):
        load_checkpoint(path, verify=False)  # ... and without it the loader still refuses
    assert CALLS == []
