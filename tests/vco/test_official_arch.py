"""V-Co's architecture alternatives (arXiv 2603.16792, Table 1; docs/co-denoising-architectures.md) against the
official code: each variant's official-layout checkpoint converts and gives the official outputs; parameter
counts; gradients; what each variant may and may not see."""
from __future__ import annotations

import pytest
import torch

from jit_core.model import JiT, ModelConfig, Stream, pixel_stream
from jit_core.model.budget import params
from jit_core.official.layout import from_official, import_official, to_official
from tests.official_fixtures import ARCH_VARIANTS, compact
from tests.vco.test_vco_plugin import build, images, small_config, stats_file  # noqa: F401 (stats_file: a fixture)
from vco_plugin.architecture import stream_fusion
from vco_plugin.null_branch import structured_unconditional
from vco_plugin.official_layout import fusion_of_official

# the official fixture folder names -> vco.fusion
VCO_FUSION = {"token_concat": "token_concat", "channel_concat": "channel_concat", "direct_addition": "add",
              "shared_jit": "shared_middle", "mmdit_joint_qkv": "shared_qkv"}
# the official tiny V-Co net: 256 px / 16x16 grids, tiny widths (official_vco_tiny)
TINY = ModelConfig(image_size=256, patch_size=16, hidden_size=64, depth=3, num_heads=4, bottleneck_dim=16,
                   in_context_len=4, in_context_start=1, num_classes=10)
SMALL = ModelConfig(image_size=32, patch_size=4, hidden_size=32, depth=4, num_heads=2, bottleneck_dim=8,
                    in_context_len=2, in_context_start=1, num_classes=10)


def streams(fusion: str, channels: int = 768, blocks: int = 1) -> list[Stream]:
    return [pixel_stream(), Stream("feature", kind="tokens", channels=channels, default_init=True,
                                   fusion=stream_fusion(fusion), fusion_blocks=blocks)]


def official_net(variant: str, tmp_path) -> JiT:
    """The variant's official checkpoint written as a file and read back by ``jit convert``'s importer."""
    path = tmp_path / "checkpoint-last.pth"
    torch.save(compact("vco_arch").arch_checkpoint(variant), path)
    with pytest.warns(UserWarning, match="no 'model_ema"):
        imported = import_official(path)
    assert imported["layout"] == "vco" and imported["plugins"] == ["vco"]
    model = JiT(TINY, streams(VCO_FUSION[variant])).eval()
    model.load_state_dict(imported["model"], strict=True)       # every tensor used, the RoPE buffers dropped
    return model


def inputs():
    io = compact("vco_tiny")
    return {"pixel": io["io/z"], "feature": io["io/zs"]}, io["io/t"], io["io/y"], io["io/y_drop"], io["io/drop"]


@pytest.mark.parametrize("variant", ARCH_VARIANTS)
def test_each_variant_reproduces_the_official_outputs(variant, tmp_path, one_thread):
    fx, model = compact("vco_arch"), official_net(variant, tmp_path)
    assert model.num_params() == fx.meta["variants"][variant]["config"]["trainable_params"]
    x, t, y, y_drop, drop = inputs()
    with torch.no_grad():
        cond = model(x, t, y)
        # the drop call through V-Co's null branch: the structured mask (shared_qkv), else the zeroed features
        u = structured_unconditional(y, drop, model.streams, num_classes=10, fusion=VCO_FUSION[variant])
        assert u.labels.tolist() == y_drop.tolist()
        assert (u.blocked is None) == (variant != "mmdit_joint_qkv")
        dropped = model(u.inputs(x), t, u.labels, blocked=u.blocked)
    tol = {"rtol": 1e-5, "atol": 1e-5}
    fx.check(cond.pixel[1], f"{variant}/io/x_pred_cond_row1", **tol)
    fx.check(cond.x_hat["feature"][1], f"{variant}/io/f_pred_cond_row1", **tol)
    fx.check(dropped.pixel[0], f"{variant}/io/x_pred_drop_row0", **tol)
    fx.check(dropped.x_hat["feature"][0], f"{variant}/io/f_pred_drop_row0", **tol)
    # the drop moves row 0 far beyond the tolerance, and leaves row 1 alone
    assert (dropped.pixel[0] - cond.pixel[0]).abs().max() > 1e-3
    torch.testing.assert_close(dropped.pixel[1], cond.pixel[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ARCH_VARIANTS)
def test_full_outputs_where_the_full_fixtures_exist(variant, full_fixtures_dir, tmp_path, one_thread):
    if full_fixtures_dir is None:
        pytest.skip("the full official fixtures are not beside this checkout (the compact copy is tested above)")
    folder = full_fixtures_dir / "official_vco_arch" / variant
    io0 = torch.load(full_fixtures_dir / "official_vco_tiny" / "io.pt", weights_only=True)
    io = torch.load(folder / "io.pt", weights_only=True)
    ckpt = torch.load(folder / "checkpoint-last.pth", weights_only=True)
    sd, layout = from_official(ckpt["model"])
    assert layout == "vco" and fusion_of_official([k[4:] for k in ckpt["model"]]) == VCO_FUSION[variant]
    model = JiT(TINY, streams(VCO_FUSION[variant])).eval()
    model.load_state_dict(sd, strict=True)
    x = {"pixel": io0["z"], "feature": io0["zs"]}
    with torch.no_grad():
        cond = model(x, io0["t"], io0["y"])
        u = structured_unconditional(io0["y"], io0["drop"], model.streams, 10, fusion=VCO_FUSION[variant])
        dropped = model(u.inputs(x), io0["t"], u.labels, blocked=u.blocked)
    for got, key in ((cond.pixel[1:], "x_pred_cond_row1"), (cond.x_hat["feature"][1:], "f_pred_cond_row1"),
                     (dropped.pixel[:1], "x_pred_drop_row0"), (dropped.x_hat["feature"][:1], "f_pred_drop_row0")):
        torch.testing.assert_close(got, io[key], rtol=1e-5, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("variant", ARCH_VARIANTS)
def test_export_gives_back_the_official_keys(variant):
    ckpt = compact("vco_arch").arch_checkpoint(variant)
    official = {k: v for k, v in ckpt["model"].items() if not k.startswith(("net.feat_rope", "img_"))}
    ours, _ = from_official(official)
    back = to_official(ours)
    assert list(back) == list(official)
    assert all(torch.equal(back[k], official[k]) for k in official)


@pytest.mark.parametrize("fusion", ["dual", "shared_qkv", "token_concat", "channel_concat", "add", "shared_middle"])
def test_parameter_counts_and_gradients_reach_both_streams(fusion, one_thread):
    torch.manual_seed(0)
    model = JiT(SMALL, streams(fusion, channels=6))
    with torch.device("meta"):
        on_meta = JiT(TINY, streams(fusion))
    assert params(TINY, on_meta.streams).trainable == on_meta.num_params()     # budget.py counts every variant
    assert params(SMALL, model.streams).trainable == model.num_params()
    for p in model.parameters():            # leave adaLN-Zero's zero init, so that every weight gets a gradient
        if p.requires_grad:
            p.data.add_(0.05 * torch.randn_like(p))
    x = {"pixel": torch.randn(2, 3, 32, 32), "feature": torch.randn(2, 64, 6)}
    out = model(x, torch.rand(2), torch.tensor([1, 2]))
    (out.pixel.square().mean() + out.x_hat["feature"].square().mean()).backward()
    silent = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert silent == []
    assert any(n.startswith("embedders.feature") for n, _ in model.named_parameters())


def test_shared_middle_pixels_never_see_the_features(one_thread):
    torch.manual_seed(0)
    model = JiT(SMALL, streams("shared_middle", channels=6)).eval()
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x = {"pixel": torch.randn(2, 3, 32, 32), "feature": torch.randn(2, 64, 6)}
    t, y = torch.rand(2), torch.tensor([1, 2])
    with torch.no_grad():
        a = model(x, t, y)
        b = model({**x, "feature": torch.randn(2, 64, 6)}, t, y)
        joint = JiT(SMALL, streams("channel_concat", channels=6)).eval()
        for p in joint.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
        c, d = joint(x, t, y), joint({**x, "feature": torch.randn(2, 64, 6)}, t, y)
    assert torch.equal(a.pixel, b.pixel) and not torch.equal(a.x_hat["feature"], b.x_hat["feature"])
    assert not torch.allclose(c.pixel, d.pixel)        # the control: a fused variant's pixels do see them


def test_two_extra_streams_with_a_fused_one_are_refused_in_one_line():
    three = streams("channel_concat", channels=6) + [Stream("edges", kind="tokens", channels=4)]
    with pytest.raises(ValueError, match=r"'channel_concat', which takes exactly one extra stream.*\['edges'\]") as e:
        JiT(SMALL, three)
    assert "\n" not in str(e.value)
    both_joint = streams("dual", channels=6) + [Stream("edges", kind="tokens", channels=4)]
    assert JiT(SMALL, both_joint).fusion.kind == "joint"          # joint streams compose as before
    with pytest.raises(ValueError, match="set fusion on the extra stream"):
        JiT(SMALL, [Stream("pixel", kind="patch", fusion="add"), Stream("feature", channels=6)])
    with pytest.raises(ValueError, match="unknown fusion 'concat'"):
        Stream("feature", fusion="concat")


def test_a_mask_on_a_variant_without_cross_stream_attention_is_refused():
    model = JiT(SMALL, streams("add", channels=6))
    blocked = torch.zeros(1, 2, 2, dtype=torch.bool)
    blocked[0, 0, 1] = True
    with pytest.raises(ValueError, match="'add' has no attention across streams to mask"):
        model({"pixel": torch.randn(1, 3, 32, 32), "feature": torch.randn(1, 64, 6)}, torch.rand(1),
              torch.tensor([1]), blocked=blocked)


def test_channel_concat_and_add_with_no_post_blocks_fuse_up_to_the_heads(one_thread):
    for fusion in ("channel_concat", "add"):
        model = JiT(SMALL, streams(fusion, channels=6, blocks=0))
        assert params(SMALL, model.streams).trainable == model.num_params()
        assert all(hasattr(b, "shared") for b in model.blocks)
        out = model({"pixel": torch.randn(2, 3, 32, 32), "feature": torch.randn(2, 64, 6)}, torch.rand(2),
                    torch.tensor([1, 2]), capture=[1])
        assert out.pixel.shape == (2, 3, 32, 32) and out.x_hat["feature"].shape == (2, 64, 6)
        assert out.hidden[1]["pixel"].shape == (2, 64, 32)


@pytest.mark.parametrize("variant", ["channel_concat", "shared_jit", "token_concat", "mmdit_joint_qkv"])
def test_jit_convert_writes_a_run_that_rebuilds_the_variant(variant, tmp_path):
    import json

    from click.testing import CliRunner

    from jit_core.official.infer import infer_model_config, streams_for
    from jit_core.runs.convert import convert_command
    from jit_core.runs.loading import load_weights
    source = tmp_path / "checkpoint-last.pth"
    torch.save(compact("vco_arch").arch_checkpoint(variant), source)
    with pytest.warns(UserWarning, match="no 'model_ema"):      # the fixture stores no EMA copies
        result = CliRunner().invoke(convert_command(), [str(source), str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    trainable = compact("vco_arch").meta["variants"][variant]["config"]["trainable_params"]
    assert "vco layout" in result.output and f"{trainable:,} trainable" in result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["plugins"] == ["vco"] and config["plugin_options"] == {"vco": {"fusion": VCO_FUSION[variant]}}
    sd = load_weights(tmp_path / "run", "model")
    assert ModelConfig(**infer_model_config(sd)) == TINY
    extra = streams_for(sd)[1]
    assert (extra.fusion, extra.fusion_blocks) == (stream_fusion(VCO_FUSION[variant]), 1)
    JiT(TINY, streams(VCO_FUSION[variant])).load_state_dict(sd, strict=True)


# ------------------------------------------------------------------------------ through the V-Co plugin


def test_vco_fusion_option_builds_the_variant_and_its_null_branch_zeroes_the_features(vco, stats_file, one_thread):  # noqa: F811
    from jit_core.diffusion import sample, training_losses
    from jit_core.plugins import Plugins
    from jit_core.plugins.recording import RecordingPlugin
    rec = RecordingPlugin()
    pl = Plugins(enabled=["vco"], extra=[rec])
    cfg = small_config(pl, core=[("diffusion.label_drop_prob", 0.5)], stats=stats_file, fusion="add")
    model = build(pl, cfg)
    assert model.fusion.kind == "add" and model.streams[1].fusion == "add"
    x, labels = images(8), torch.tensor([0, 0, 0, 0, 3, 3, 3, 3])
    for seed in range(20):
        torch.manual_seed(seed)
        total, _ = training_losses(model, model.streams, x, labels, cfg, pl.hook)
        s = rec.calls_of("jit_loss_terms")[-1].kwargs["step"]
        if 0 < s.drop.sum() < len(s.drop):
            break
    drop = s.drop
    assert s.uncond.blocked is None                                   # no attention to mask
    fed = s.uncond.inputs(s.noisy)["feature"]
    assert not fed[drop].any() and torch.equal(fed[~drop], s.noisy["feature"][~drop])   # dropped rows zeroed
    assert s.uncond.loss_masks["feature"].tolist() == (~drop).float().tolist()         # their feature loss off
    total.backward()
    assert model.embedders["feature"].proj2.weight.grad.abs().sum() > 0
    # sampling with CFG: the unconditional half gets zeroed features, batched or not alike
    model.eval()
    kw = dict(hook=pl.hook, config=cfg, steps=3, cfg=2.0, return_all_streams=True)
    a = sample(model, labels[:3], batched_cfg=True, generator=torch.Generator().manual_seed(0), **kw)
    b = sample(model, labels[:3], batched_cfg=False, generator=torch.Generator().manual_seed(0), **kw)
    assert (a["pixel"] - b["pixel"]).abs().max() < 1e-5 and torch.isfinite(a["feature"]).all()


def test_symmetric_mask_needs_a_fusion_with_cross_stream_attention(vco):
    from jit_core.config import ConfigError
    with pytest.raises(ConfigError, match="vco.fusion=token_concat has not"):
        small_config(vco, fusion="token_concat", symmetric_mask=True)


@pytest.mark.parametrize("fusion", ["shared_qkv", "token_concat", "channel_concat", "add", "shared_middle"])
def test_every_variant_runs_on_one_device_fast_path_and_memory_estimate(fusion):
    """On the meta device every tensor the forward makes must follow the inputs' device (a table built on the
    CPU would fail here, as it would on a GPU); the fused attention path agrees with the exact one."""
    from jit_core.model.attention import StreamGroups
    from jit_core.model.budget import training_memory
    with torch.device("meta"):
        model = JiT(SMALL, streams(fusion, channels=6), attention_path="fast")
        out = model({"pixel": torch.randn(2, 3, 32, 32), "feature": torch.randn(2, 64, 6)}, torch.rand(2),
                    torch.tensor([1, 2]))
    assert out.pixel.device.type == "meta" and out.x_hat["feature"].shape == (2, 64, 6)
    assert training_memory(SMALL, model.streams, batch=8).peak > 0
    torch.manual_seed(0)
    model = JiT(SMALL, streams(fusion, channels=6))
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x = {"pixel": torch.randn(3, 3, 32, 32), "feature": torch.randn(3, 64, 6)}
    t, y = torch.rand(3), torch.tensor([1, 2, 3])
    blocked = None
    if fusion == "shared_qkv":
        blocked = torch.zeros(3, 2, 2, dtype=torch.bool)
        blocked[0, 0, 1] = True
    with torch.no_grad():
        exact = model(x, t, y, blocked=blocked)
        model.set_attention("fast")
        fast = model(x, t, y, blocked=StreamGroups(blocked) if blocked is not None else None)
    for name in ("pixel", "feature"):
        torch.testing.assert_close(fast.x_hat[name], exact.x_hat[name], rtol=1e-4, atol=1e-5)


def test_bad_fusion_blocks_are_refused_in_one_line():
    with pytest.raises(ValueError, match="fusion_blocks=-1 must be an integer >= 0"):
        Stream("feature", fusion="add", fusion_blocks=-1)
    for fusion, blocks, match in (("channel_concat", 5, "needs depth >= 5"),
                                  ("shared_middle", 0, "needs 1 <= fusion_blocks <= depth / 2"),
                                  ("shared_middle", 3, "needs 1 <= fusion_blocks <= depth / 2")):
        with pytest.raises(ValueError, match=match) as e:
            JiT(SMALL, streams(fusion, channels=6, blocks=blocks))
        assert "\n" not in str(e.value)
    grid = [pixel_stream(), Stream("feature", channels=6, grid=4, fusion="add")]
    with pytest.raises(ValueError, match="must lie on the pixel grid"):
        JiT(SMALL, grid)


@pytest.mark.slow   # ~20 s: five dynamo traces
def test_every_variant_compiles_in_full_graphs():
    """``train.compile``: dynamo traces each variant's blocks and heads without a graph break (eager backend:
    the trace, not inductor's code generation, is what a fusion could break)."""
    from jit_core.model.compile import compile_model
    x = {"pixel": torch.randn(2, 3, 32, 32), "feature": torch.randn(2, 64, 6)}
    t, y = torch.rand(2), torch.tensor([1, 2])
    for fusion in ("shared_qkv", "token_concat", "channel_concat", "add", "shared_middle"):
        torch.manual_seed(0)
        model = JiT(SMALL, streams(fusion, channels=6))
        with torch.no_grad():
            eager = model(x, t, y).pixel
            compile_model(model, backend="eager", fullgraph=True)
            assert torch.equal(model(x, t, y).pixel, eager), fusion
