"""The widened-JiT control (V-Co, arXiv 2603.16792, Table 1): JiT grown in width to V-Co's trainable
parameter count, the same run as plain JiT but for the model, and an arm of the V-Co studies."""
from __future__ import annotations

import pytest

from jit_core.config import get_preset
from jit_core.model import budget, get_model_config
from jit_core.plugins import resolve_run
from jit_core.study.spec import config_changes, expand

# (widened preset, the plain JiT preset it widens, the V-Co preset whose size it matches)
PAIRS = [("jit-tiny-wide", "tiny", "vco-tiny"), ("jit-b16-wide", "jit-b16", "vco-b16")]


def _size(preset: str) -> tuple[int, int]:
    """(trainable parameters, streams) of the run ``preset`` as `jit models` counts them, with its own streams."""
    cfg = get_preset(preset)
    mc = get_model_config(cfg.model, **cfg.model_overrides)
    resolved, plugins = resolve_run(cfg)
    streams = plugins.streams(resolved, mc)
    return budget.params(mc, streams).trainable, len(streams)


@pytest.mark.parametrize("wide, plain, vco_preset", PAIRS)
def test_widened_jit_matches_vcos_trainable_count_within_2_percent(wide, plain, vco_preset, vco):
    (n_wide, k_wide), (n_vco, k_vco), (n_plain, _) = _size(wide), _size(vco_preset), _size(plain)
    assert (k_wide, k_vco) == (1, 2)                  # V-Co counted with its feature stream, the control without
    assert n_vco > 1.9 * n_plain                      # the control is needed at all
    assert abs(n_wide - n_vco) / n_vco < 0.02, (wide, n_wide, vco_preset, n_vco)


def test_widened_b16_is_the_papers_261m_control():
    mc, plain = get_model_config("JiT-B/16-wide"), get_model_config("JiT-B/16")
    assert round(budget.params(mc).trainable / 1e6) == 262 and 260e6 < budget.params(mc).trainable < 262e6
    assert (mc.hidden_size, mc.head_dim, mc.depth, mc.bottleneck_dim) == (1088, plain.head_dim, 12, 128)


@pytest.mark.parametrize("wide, plain, vco_preset", PAIRS)
def test_widened_preset_differs_from_plain_jit_only_in_the_model(wide, plain, vco_preset):
    assert config_changes(get_preset(plain).to_dict(), get_preset(wide).to_dict()) == ["model"]
    assert get_preset(wide).plugins == []


@pytest.mark.parametrize("study", ["vco-tiny", "vco-b16"])
def test_study_arm_is_jit_widened_to_vcos_count_against_jit(study, vco, tmp_path):
    from jit_core.study.registry import get_study
    by_arm = {e.arm.name: e for e in expand(get_study(study), tmp_path, seeds=[0], arms=["JiT", "JiT widened"])}
    arm = by_arm["JiT widened"].arm
    assert (arm.reference, arm.paper, arm.changes) == ("JiT", "worse", ("model",))
    assert config_changes(by_arm["JiT"].config, by_arm["JiT widened"].config) == ["model"]
    assert by_arm["JiT widened"].config["model"] in ("JiT-S/4-wide", "JiT-B/16-wide")
