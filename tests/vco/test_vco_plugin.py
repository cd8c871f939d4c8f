"""V-Co through jit_core's hooks: loading, presets, the feature stream, calibration, the masked
losses, the hybrid term, batches, guidance, sampling and the CLI group.

Real offline encoder (EfficientNet-Lite0) on a small JiT-T/4 (32 px, 8x8 grid), 1-channel images.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import click
import pytest
import torch
from click.testing import CliRunner

from jit_core.config import ConfigError, evolve, get_preset, resolve, set_key
from jit_core.diffusion import StepState, guidance_scales, per_sample_v_loss, sample, training_losses, unconditional_form
from jit_core.hookcalls import call_each
from jit_core.model import JiT, get_model_config
from jit_core.plugins import Plugins, resolve_run
from jit_core.plugins.recording import RecordingPlugin
from vco_plugin import plugin
from vco_plugin.batches import GroupedClassBatchSampler
from vco_plugin.calibration import compute_stats, load_stats, save_stats
from vco_plugin.drift_loss import hybrid_loss
from vco_plugin.features import build_encoder

HOOKS = {"jit_options", "jit_presets", "jit_studies", "jit_add_commands", "jit_run_plugin",   # install time
         "jit_official_layouts"}
RUN_HOOKS = {"jit_setup", "jit_preflight", "jit_streams", "jit_loss_terms", "jit_batch_sampler"}   # the run object's (the feature
# stream carries its normalisation, guidance scale and null branch itself: plugin.FeatureStream)


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory):
    """Statistics of the real encoder on a few random 32 px images (grid 8)."""
    enc = build_encoder("efficientnet_lite0")
    g = torch.Generator().manual_seed(0)
    stats = compute_stats(enc, [torch.rand(4, 1, 32, 32, generator=g) * 2 - 1 for _ in range(2)], 8, progress=False)
    path = tmp_path_factory.mktemp("stats") / "stats.safetensors"
    save_stats(stats, path)
    return str(path)


def small_config(pl, core=(), **options):
    """vco-tiny on the small JiT-T/4 (32 px, grid 8) with 1-channel images, resolved; ``core``: (key, value)
    pairs of core keys (``("diffusion.label_drop_prob", 0.5)``)."""
    cfg = get_preset("vco-tiny")
    cfg.model, cfg.model_overrides = "JiT-T/4", {"in_channels": 1}
    cfg.plugin_options["vco"].update(options)
    for key, value in dict(core).items():
        set_key(cfg, key, value)
    cfg, _ = resolve_run(cfg, plugins=pl)   # the run objects of this config answer from here on
    return cfg


def randomised(model, seed=0):
    """Perturb every trainable tensor so the zero-initialised adaLN and heads are not trivially zero."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


def build(pl, cfg, seed=0):
    mc = get_model_config(cfg.model, **cfg.model_overrides)
    return randomised(JiT(mc, pl.streams(cfg, mc), attention_path="exact"), seed)


def images(n=4, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----------------------------------------------------------------------------------- loading and config
def test_loads_through_entry_point(vco):
    info = vco.infos["vco"]
    assert info.source.startswith("entry point")
    assert HOOKS == set(info.hooks)
    run = vco.start_run(small_config(vco))["vco"]
    assert isinstance(run, plugin.VCoRun) and RUN_HOOKS == {c.name for c in vco.pm.get_hookcallers(run)}
    assert info.options == dataclasses.asdict(plugin.VCoOptions())
    assert len(dataclasses.fields(plugin.VCoOptions)) <= 20         # compact: one option per idea (fusion: Table 1)


def test_options_are_typed_and_checked(vco):
    cfg = get_preset("vco-tiny")
    schemas = vco.option_schemas()
    set_key(cfg, "vco.drift_coef", "5", schemas)
    set_key(cfg, "vco.cfg_feature", "none", schemas)
    set_key(cfg, "vco.symmetric_mask", "true", schemas)
    opts = plugin.options(resolve(cfg, schemas))
    assert opts.drift_coef == 5.0 and opts.cfg_feature is None and opts.symmetric_mask is True
    with pytest.raises(ConfigError, match="drift_coef"):
        set_key(cfg, "vco.drift_cof", "5", schemas)
    for key, value, message in (("calibration", "zscore", "vco.calibration=zscore: must be one of rms, time_shift"),
                                ("drift_coef", -1.0, "vco.drift_coef=-1.0: must be >= 0"),
                                ("null_branch", "zeros", "must be one of structured, label_drop, input_dropout")):
        bad = get_preset("vco-tiny")
        bad.plugin_options["vco"][key] = value
        with pytest.raises(ConfigError, match=message):
            resolve(bad, schemas)


def test_presets(vco):
    tiny, vtiny = get_preset("tiny").to_dict(), get_preset("vco-tiny").to_dict()
    assert vtiny.pop("plugins") == ["vco"] and vtiny.pop("plugin_options") == {"vco": {"encoder": "efficientnet_lite0",
                                                                                "groups_per_step": 8}}
    tiny.pop("plugins"), tiny.pop("plugin_options")
    assert tiny == vtiny                                           # the side-by-side pair
    b = get_preset("vco-b16")
    assert (b.model, b.sample.cfg, b.plugins, b.data.image_size) == ("JiT-B/16", 1.8, ["vco"], 256)
    assert b.optim.batch_size == 128 and b.diffusion.label_drop_prob == 0.1
    assert b.plugin_options["vco"] == {"encoder": "dinov2", "groups_per_step": 8}   # the README command's 8 x 128
    assert get_preset("vco-l16").sample.cfg == 1.4
    h = get_preset("vco-h16")
    assert h.sample.cfg == 1.5
    assert get_model_config(h.model, **h.model_overrides).proj_drop == 0.0   # V-Co scripts: dropout 0


def test_disabled_plugin_leaves_the_baseline(vco):
    cfg = get_preset("tiny")
    mc = get_model_config("JiT-T/4")
    labels, drop = torch.tensor([1, 2, 3]), torch.tensor([True, False, True])
    for pl in (Plugins(), vco):                     # not installed-enabled, or enabled but not in config.plugins
        streams = pl.streams(cfg, mc)
        assert [s.name for s in streams] == ["pixel"]
        u = unconditional_form(pl.hook, labels, drop, streams, cfg, 10)
        assert u.labels.tolist() == [10, 2, 10] and u.blocked is None and u.loss_masks == {} and not u.null_inputs
        assert guidance_scales(streams, 2.0) == {"pixel": 2.0}
        assert pl.batch_sampler(SimpleNamespace(targets=[0, 1] * 50), cfg, 0, 1, 0) is None
    assert "vco" not in Plugins().infos


# ----------------------------------------------------------------------------------- stream and calibration
def test_feature_stream(vco, stats_file):
    cfg = small_config(vco, stats=stats_file)
    mc = get_model_config(cfg.model, **cfg.model_overrides)
    streams = vco.streams(cfg, mc)
    assert [s.name for s in streams] == ["pixel", "feature"]
    f = streams[1]
    assert (f.kind, f.channels, f.loss_weight, f.noise_scale, f.default_init, f.time_shift, f.guidance) == \
        ("tokens", 40, 0.1, 1.0, True, 1.0, True)
    assert f.clean(images(), {}).shape == (4, 64, 40)


def test_normalize_modes(vco, stats_file):
    stats = load_stats(stats_file)
    z = build_encoder("efficientnet_lite0").target_tokens(images(), 8)
    scaled = z / torch.sqrt(stats.var + 1e-5)
    base = {"stats": stats_file}
    for extra, expected in (({}, scaled * stats.rms_factor),
                            ({"rms_factor": 0.5}, scaled * 0.5),
                            ({"calibration": "time_shift"}, scaled * stats.rms_factor),   # run_b: scaled and shifted
                            ({"calibration": "time_shift_corrected"}, scaled),
                            ({"calibration": "none"}, scaled)):                           # run_a: alpha = 1
        cfg = small_config(vco, **base, **extra)
        stream = vco.streams(cfg, get_model_config(cfg.model, **cfg.model_overrides))[1]
        out = stream.normalize(z)
        assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6), extra
        shifted = extra.get("calibration", "").startswith("time_shift")
        assert stream.time_shift == (stats.rms_factor if shifted else 1.0)
        assert stream.shift_prediction == (extra.get("calibration") != "time_shift")
    pixel = vco.streams(cfg, get_model_config(cfg.model, **cfg.model_overrides))[0]
    x = images()
    assert pixel.normalize(x) is x


def _recorded_step(cfg, seed=0):
    """One training objective of ``cfg`` with no sample dropped: (losses, the StepState plugins saw)."""
    rec = RecordingPlugin()
    pl = Plugins(enabled=["vco"], extra=[rec])
    torch.manual_seed(seed)                  # the initial weights
    model = build(pl, cfg)
    torch.manual_seed(seed)
    _, losses = training_losses(model, model.streams, images(), torch.tensor([0, 0, 3, 3]), cfg, pl.hook,
                                drop=torch.zeros(4, dtype=torch.bool))
    return losses, rec.calls_of("jit_loss_terms")[-1].kwargs["step"]


def test_calibration_none_is_the_released_run_a_rms_with_alpha_1(vco, stats_file):
    """``vco.calibration=none`` is table4_run_a as released: still standardised, alpha = 1; every loss term
    bitwise equal to ``calibration=rms rms_factor=1.0``."""
    none, _ = _recorded_step(small_config(vco, stats=stats_file, calibration="none"))
    rms1, _ = _recorded_step(small_config(vco, stats=stats_file, rms_factor=1.0))
    assert none.keys() == rms1.keys() and all(torch.equal(none[k], rms1[k]) for k in none)
    with pytest.raises(ConfigError, match="vco.rms_factor=0.5 has no effect with vco.calibration=none"):
        small_config(vco, stats=stats_file, calibration="none", rms_factor=0.5)


@pytest.mark.parametrize("calibration", ["time_shift", "time_shift_corrected"])
def test_time_shift_arms_follow_their_formulas(vco, stats_file, calibration):
    """The feature loss written out (t_eps = 0.05, a = the statistics' alpha, t_d = a t / (1 + (a - 1) t)):
    ``time_shift`` (table4_run_b as released): f = a z / sqrt(var + eps), z_d = t_d f + (1 - t_d) e,
    v = (f - z_d) / max(1 - t_d, t_eps) but v_hat = (f_hat - z_d) / max(1 - t, t_eps);
    ``time_shift_corrected``: f = z / sqrt(var + eps) and t_d in both velocities."""
    stats = load_stats(stats_file)
    a, t_eps = stats.rms_factor, 0.05
    cfg = small_config(vco, stats=stats_file, calibration=calibration)
    losses, s = _recorded_step(cfg, seed=3)
    z = build_encoder("efficientnet_lite0").target_tokens(images(), 8)   # a new encoder: before the draws below
    torch.manual_seed(3)                                   # the objective's draws, in its order
    t = torch.sigmoid(torch.randn(4) * cfg.diffusion.P_std + cfg.diffusion.P_mean)
    torch.randn_like(s.images)                             # the pixel noise
    f = z / torch.sqrt(stats.var + 1e-5) * (a if calibration == "time_shift" else 1.0)
    e = torch.randn_like(f)
    t_d = (a * t / (1 + (a - 1) * t)).view(-1, 1, 1)
    z_d = t_d * f + (1 - t_d) * e
    torch.testing.assert_close(s.targets["feature"], f)
    torch.testing.assert_close(s.noisy["feature"], z_d)
    t_pred = t.view(-1, 1, 1) if calibration == "time_shift" else t_d
    v = (f - z_d) / (1 - t_d).clamp_min(t_eps)
    v_hat = (s.preds["feature"] - z_d) / (1 - t_pred).clamp_min(t_eps)
    torch.testing.assert_close(losses["feature"], (v - v_hat).pow(2).mean(), rtol=1e-5, atol=0)


def test_auto_statistics_saved_once_and_reused(vco, tmp_path, monkeypatch):
    cfg = small_config(vco, {"run_dir": str(tmp_path / "run")}, calib_images=6)
    stream = vco.streams(cfg, get_model_config(cfg.model, **cfg.model_overrides))[1]
    z = stream.clean(images(), {})
    out = stream.normalize(z)
    saved = load_stats(tmp_path / "run" / plugin.STATS_FILE)
    assert (tmp_path / "run" / "vco_stats.json").is_file()
    assert saved.meta["num_images"] == 6 and saved.var.shape == (64, 40)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]   # no temp leftovers
    # per step: no recomputation; a resumed process (fresh cache) loads the file instead of computing
    monkeypatch.setattr(plugin._Calibration, "_compute", lambda *a: pytest.fail("statistics recomputed"))
    assert torch.equal(stream.normalize(z), out)
    vco.start_run(cfg)                  # a new run (a resumed process) loads the file instead of computing
    stream = vco.streams(cfg, get_model_config(cfg.model, **cfg.model_overrides))[1]
    assert torch.equal(stream.normalize(z), out)


def test_missing_stats_file_is_a_config_error(vco, tmp_path):
    with pytest.raises(ConfigError, match=r"vco.stats=.*nope.safetensors' does not exist: create it with `jit vco calibrate`"):
        small_config(vco, stats=str(tmp_path / "nope.safetensors"))       # at start-up, with the options


# ----------------------------------------------------------------------------------- training objective
def _losses(vco, cfg, drop_prob, seed=0):
    cfg = evolve(cfg, {"diffusion.label_drop_prob": drop_prob})
    model = build(vco, cfg)
    torch.manual_seed(seed)
    total, losses = training_losses(model, model.streams, images(), torch.tensor([0, 0, 3, 3]), cfg, vco.hook)
    return model, total, losses


def test_feature_loss_is_zero_for_dropped_samples(vco, stats_file):
    cfg = small_config(vco, stats=stats_file)
    model, total, losses = _losses(vco, cfg, 1.0)
    assert set(losses) == {"pixel", "feature", "hybrid"}
    assert losses["feature"].item() == 0.0 and losses["pixel"].item() > 0
    total.backward()
    feature_params = [p for n, p in model.named_parameters() if ".feature." in f".{n}."]
    assert feature_params and all(p.grad is None or not p.grad.any() for p in feature_params)
    assert model.heads["pixel"].linear.weight.grad.abs().sum() > 0

    _, total, losses = _losses(vco, small_config(vco, stats=stats_file), 0.0)
    assert losses["feature"].item() > 0 and torch.isfinite(total)
    assert torch.allclose(total, losses["pixel"] + 0.1 * losses["feature"] + losses["hybrid"])


def test_mixed_drop_counts_only_kept_samples_in_feature_loss(vco, stats_file):
    rec = RecordingPlugin()
    pl = Plugins(enabled=["vco"], extra=[rec])
    cfg = small_config(pl, {"diffusion.label_drop_prob": 0.5}, stats=stats_file)
    model = build(pl, cfg)
    x, labels = images(8), torch.tensor([0, 0, 0, 0, 3, 3, 3, 3])
    for seed in range(20):
        torch.manual_seed(seed)
        _, losses = training_losses(model, model.streams, x, labels, cfg, pl.hook)
        drop = rec.calls_of("jit_loss_terms")[-1].kwargs["step"].drop
        if 0 < drop.sum() < len(drop):
            break
    s = rec.calls_of("jit_loss_terms")[-1].kwargs["step"]
    assert s.uncond.loss_masks["feature"].tolist() == (~drop).float().tolist()
    assert s.uncond.labels.tolist() == torch.where(drop, 10, labels).tolist()
    per = per_sample_v_loss(s.preds["feature"], s.targets["feature"], s.noisy["feature"], s.t, cfg.diffusion.t_eps)
    assert torch.allclose(losses["feature"], per[~drop].mean(), rtol=1e-6)          # dropped samples count 0
    per_pix = per_sample_v_loss(s.preds["pixel"], s.targets["pixel"], s.noisy["pixel"], s.t, cfg.diffusion.t_eps)
    assert torch.allclose(losses["pixel"], per_pix.mean(), rtol=1e-6)               # pixel loss kept for all


def test_hybrid_term_grads_reach_prediction_not_encoder(vco, stats_file):
    cfg = small_config(vco, stats=stats_file)
    x = images(4)
    x_hat = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    labels = torch.tensor([1, 1, 1, 5])
    step = StepState(config=cfg, model=None, images=x, labels=labels, t=torch.rand(4), drop=torch.zeros(4, dtype=bool),
                     uncond=None, targets={}, noisy={}, preds={"pixel": x_hat}, hidden={}, aux=None, losses={})
    ((_, terms),) = call_each(vco.hook.jit_loss_terms, step=step, generator=None)
    enc = build_encoder("efficientnet_lite0")
    expected = 10.0 * hybrid_loss(enc.embedding(x_hat), enc.embedding(x), labels)
    assert torch.allclose(terms["hybrid"], expected, rtol=1e-5)
    enc.zero_grad(set_to_none=True)
    terms["hybrid"].backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in enc.parameters())
    small_config(vco, drift_coef=0.0)                      # a run without the hybrid loss answers nothing
    assert call_each(vco.hook.jit_loss_terms, step=step, generator=None) == [("vco", {})]


# ----------------------------------------------------------------------------------- batches and guidance
def test_batch_sampler_hook(vco, caplog):
    targets = [i % 10 for i in range(1000)]
    ds = SimpleNamespace(targets=targets)
    s = vco.batch_sampler(ds, small_config(vco, groups_per_step=None), 1, 2, 7)   # None: one group per rank
    assert isinstance(s, GroupedClassBatchSampler)
    assert (s.groups_per_step, s.group_size, s.rank, s.world_size) == (2, 64, 1, 2)
    assert len(s) == 1000 // (64 * 2)
    assert all(len({targets[i] for i in b}) == 1 for b in s)
    with caplog.at_level("WARNING"):
        s2 = vco.batch_sampler(ds, small_config(vco, groups_per_step=4), 0, 1, 7)
    assert s2.group_size == 16 and s2.batch_size == 64
    assert "vco.groups_per_step=4" in caplog.text
    assert vco.batch_sampler(ds, small_config(vco, class_balanced=False), 0, 1, 0) is None
    with pytest.raises(ConfigError, match="vco.groups_per_step=3 does not divide the global batch 64"):
        vco.batch_sampler(ds, small_config(vco, groups_per_step=3), 0, 1, 0)


def test_guidance_scales(vco, stats_file):
    cfg = small_config(vco, stats=stats_file)
    pixel, feature = vco.streams(cfg, get_model_config(cfg.model, **cfg.model_overrides))

    def scale(stream, w):
        return guidance_scales([stream], w)[stream.name]

    assert scale(pixel, 1.0) == 1.0 and scale(feature, 1.0) == 1.0
    assert scale(pixel, 2.0) == 2.0 and scale(feature, 2.0) == 2.0
    with_wd = small_config(vco, stats=stats_file, cfg_feature=3.0)
    pixel, feature = vco.streams(with_wd, get_model_config(with_wd.model, **with_wd.model_overrides))
    assert scale(feature, 2.0) == 3.0 and scale(pixel, 2.0) == 2.0
    assert scale(feature, 1.0) == 1.0                           # unguided means unguided (docs/official-code.md#defects, 2)


# ----------------------------------------------------------------------------------- sampling and CLI
def test_sampler_with_structured_cfg(vco, stats_file):
    cfg = small_config(vco, stats=stats_file)
    model = build(vco, cfg).eval()
    labels = torch.tensor([0, 3, 7])

    def run(batched, hook=vco.hook, w=2.0):
        return sample(model, labels, hook=hook, config=cfg, steps=4, cfg=w, batched_cfg=batched,
                      generator=torch.Generator().manual_seed(0), return_all_streams=True)

    batched, separate = run(True), run(False)
    for k in ("pixel", "feature"):
        assert batched[k].shape == separate[k].shape
        assert (batched[k] - separate[k]).abs().max() < 1e-5, k
    # the unconditional pass really uses the mask: the core's plain label drop gives other samples
    feature = model.streams[1]
    feature.null_branch = lambda *args: None          # the base class's answer: JiT's label drop only
    plain = run(True)
    del feature.null_branch
    assert (plain["pixel"] - batched["pixel"]).abs().max() > 1e-4
    unguided = run(True, w=1.0)
    assert torch.isfinite(unguided["pixel"]).all()


def test_cli_group(vco):
    @click.group()
    def root():
        pass

    vco.hook.jit_add_commands(cli=root)
    assert "calibrate" in root.commands["vco"].commands
    result = CliRunner().invoke(root, ["vco", "calibrate", "--help"])
    assert result.exit_code == 0 and "--encoder" in result.output


# ----------------------------------------------------------------------------------- the v2 guarantees
@pytest.mark.slow
def test_vco_resumes_bit_identically(tmp_path):
    """Stopped after step 2 and resumed in a new trainer: the losses of steps 3-4 and the final weights are
    those of an uninterrupted run (the encoder is built by set-up under a forked RNG, never lazily)."""
    from jit_core.testing import check_resumes_bit_identically
    check_resumes_bit_identically(tmp_path, plugins=["vco"], steps=4,
                                  **{"vco.encoder": "efficientnet_lite0", "vco.calib_images": 32})
