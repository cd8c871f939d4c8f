"""`--dry-run` runs what the real start-up runs, a stream's encoder weights included, and a failed start
leaves no files behind (no run folder, no config.json, no lock)."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import jit_core.cli as jit_cli
from jit_core.model.streams import Stream
from jit_core.testing import RecordingPlugin, train_tiny


class MissingWeights(RuntimeError):
    pass


def _failing_target(images: torch.Tensor) -> torch.Tensor:
    raise MissingWeights("encoder weights not available offline: pass probe.weights=PATH")


def _stream_with_missing_weights() -> Stream:
    return Stream("probe", kind="tokens", channels=2, target=_failing_target)


def test_a_stream_target_that_cannot_start_fails_the_start_before_anything_is_written(tmp_path):
    rec = RecordingPlugin("probe", returns={"jit_streams": [_stream_with_missing_weights()]})
    with pytest.raises(MissingWeights, match="weights not available offline"):
        train_tiny(tmp_path, extra_plugins=[rec])
    assert not any(tmp_path.iterdir())              # no run folder, no config.json, no .lock
    assert rec.called("jit_streams") and not rec.called("jit_trainable_modules")


def test_a_failure_after_the_lock_removes_the_new_run_folder(tmp_path):
    def boom(config, model):
        raise RuntimeError("plugin module cannot be built")
    rec = RecordingPlugin("late", handlers={"jit_trainable_modules": boom})
    with pytest.raises(Exception, match="cannot be built"):
        train_tiny(tmp_path, extra_plugins=[rec])
    assert not any(tmp_path.iterdir())


def test_the_probe_calls_each_target_on_two_images_and_leaves_the_rng_alone(tmp_path, one_thread):
    from jit_core.plugins import Plugins
    from jit_core.testing import tiny_config
    from jit_core.training.startup import probe_stream_targets
    seen = []
    stream = Stream("edges", kind="tokens", channels=2, target=lambda x: seen.append(x.shape) or x[:, :2, 0, :2])
    torch.manual_seed(3)
    before = torch.random.get_rng_state()
    from jit_core.data import build_dataset
    probe_stream_targets(Plugins().streams(tiny_config(), _mc()) + [stream], build_dataset(tiny_config().data), "cpu")
    assert seen and seen[0][0] == 2
    assert torch.equal(torch.random.get_rng_state(), before)


def _mc():
    from jit_core.model import get_model_config
    return get_model_config("JiT-T/4", in_channels=1, num_classes=10, image_size=32)


@pytest.mark.parametrize("dry_run", [True, False])
def test_vco_with_dinov2_offline_fails_at_start_up_and_writes_nothing(tmp_path, monkeypatch, dry_run):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))   # no cached DINOv2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    run = tmp_path / "runs" / "tiny-vco"
    args = ["train", "--preset", "test", "--plugin", "vco", "--run-dir", str(run), "vco.groups_per_step=1"]
    result = CliRunner().invoke(jit_cli.cli, args + (["--dry-run"] if dry_run else []))
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "DINOv2 weights not available offline" in errors[0] and "vco.encoder_weights" in errors[0]
    assert not (tmp_path / "runs").exists()
