"""Plugins that compose: V-Co and a second co-denoising plugin (tests/edgeco_plugin.py, loaded by module path)
in one run, in both orders; their unconditional branches merge (training and CFG alike), stream order follows
``--plugin``; module-path options take effect; V-Co + the REPA example train together; the three
``vco.null_branch`` variants. Real offline EfficientNet-Lite0, the tiny JiT-T/4 on digits."""
from __future__ import annotations

import json

import pytest
import torch

from jit_core.diffusion import per_sample_v_loss, sample, training_losses, unconditional_form
from jit_core.testing import one_step, read_metrics, tiny_model, train_tiny

pytest_plugins = ["jit_core.testing"]

EDGECO = "tests.edgeco_plugin"
VCO_OPTS = {"vco.encoder": "efficientnet_lite0", "vco.calib_images": 16, "vco.drift_coef": 0.0}
ORDERS = {"vco-first": ["vco", EDGECO], "edgeco-first": [EDGECO, "vco"]}
DROP = torch.tensor([True, False, True, False])


def images(n=4, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(params=list(ORDERS), scope="module")
def both(request, tmp_path_factory):
    """V-Co and edgeco enabled together (order from the parameter), on a tiny model with non-trivial weights."""
    # V-Co's automatic statistics are saved in the run folder
    tiny = tiny_model(ORDERS[request.param], run_dir=str(tmp_path_factory.mktemp("run")), **VCO_OPTS)
    return request.param, tiny


def test_streams_follow_the_plugin_order(both):
    order, tiny = both
    names = [(s.name, s.plugin) for s in tiny.model.streams]
    expected = [("feature", "vco"), ("edges", EDGECO)]
    assert names == [("pixel", "")] + (expected if order == "vco-first" else expected[::-1])


def test_both_null_branches_merge_in_training(both, one_thread):
    """A dropped sample: its pixel queries see neither plugin stream (perturbing either changes nothing), both
    loss masks apply (feature and edges losses count only the kept samples); a kept sample sees both."""
    _, tiny = both
    model, hook, cfg = tiny.model, tiny.plugins.hook, tiny.config
    u = unconditional_form(hook, torch.tensor([1, 2, 3, 4]), DROP, model.streams, cfg, 10)
    idx = {s.name: i for i, s in enumerate(model.streams)}
    for other in ("feature", "edges"):
        assert u.blocked[:, idx["pixel"], idx[other]].tolist() == DROP.tolist()
        assert u.loss_masks[other].tolist() == (~DROP).float().tolist()
    assert u.blocked.sum() == 2 * DROP.sum() and "pixel" not in u.loss_masks and u.labels.tolist() == [10, 2, 10, 4]

    g = torch.Generator().manual_seed(0)
    z = {"pixel": torch.randn(4, 1, 32, 32, generator=g), "feature": torch.randn(4, 64, 40, generator=g),
         "edges": torch.randn(4, 64, 2, generator=g)}
    t = torch.full((4,), 0.5)
    with torch.no_grad():
        base = model(z, t, u.labels, blocked=u.blocked).pixel
        for other in ("feature", "edges"):
            moved = model({**z, other: z[other] + torch.randn(z[other].shape, generator=g)}, t, u.labels,
                          blocked=u.blocked).pixel
            assert torch.allclose(moved[DROP], base[DROP], atol=1e-6, rtol=0), other     # dropped: blind to it
            assert (moved[~DROP] - base[~DROP]).abs().max() > 1e-4, other                # kept: sees it

    from jit_core.testing import RecordingPlugin
    rec = RecordingPlugin("probe")
    tiny.plugins.pm.register(rec, name="probe")
    try:
        torch.manual_seed(0)
        _, losses = training_losses(model, model.streams, images(), torch.tensor([1, 2, 3, 4]), cfg, hook, drop=DROP)
    finally:
        tiny.plugins.pm.unregister(rec)
    step = rec.calls_of("jit_loss_terms")[-1].kwargs["step"]
    for name in ("feature", "edges"):
        per = per_sample_v_loss(step.preds[name], step.targets[name], step.noisy[name], step.t, cfg.diffusion.t_eps)
        assert torch.allclose(losses[name], per[~DROP].mean(), rtol=1e-6), name         # dropped samples count 0
    per = per_sample_v_loss(step.preds["pixel"], step.targets["pixel"], step.noisy["pixel"], step.t, cfg.diffusion.t_eps)
    assert torch.allclose(losses["pixel"], per.mean(), rtol=1e-6)                        # pixel loss kept for all
    assert set(losses) == {"pixel", "feature", "edges", "edge_fit"}


def test_both_null_branches_are_the_unconditional_half_of_cfg(both, one_thread):
    """Sampling: every guided evaluation's unconditional half carries the merged blocks (pixel -> feature and
    pixel -> edges), its conditional half none; batched and separate CFG agree."""
    _, tiny = both
    model, cfg = tiny.model, tiny.config
    idx = {s.name: i for i, s in enumerate(model.streams)}
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args[2], kwargs.get("blocked"))),
                                             with_kwargs=True)
    try:
        labels = torch.tensor([0, 3, 7])
        kw = dict(hook=tiny.plugins.hook, config=cfg, steps=3, cfg=2.0, interval=(0.0, 1.0), return_all_streams=True)
        batched = sample(model, labels, generator=torch.Generator().manual_seed(0), **kw)
        separate = sample(model, labels, generator=torch.Generator().manual_seed(0), batched_cfg=False, **kw)
    finally:
        handle.remove()
    y, blocked = seen[0]                                         # the first batched evaluation: [cond | uncond]
    assert y.tolist() == [0, 3, 7, 10, 10, 10]
    assert not blocked[:3].any()
    for other in ("feature", "edges"):
        assert blocked[3:, idx["pixel"], idx[other]].all()
    assert blocked.sum() == 6
    for k in batched:
        assert (batched[k] - separate[k]).abs().max() < 1e-5, k


def test_module_path_options_take_effect(one_thread, tmp_path):
    """--plugin tests.edgeco_plugin tests.edgeco_plugin.smooth=...: the option is read under the module path
    the plugin was loaded by (the loss term scales with it)."""
    _, a = one_step(plugins=[EDGECO], run_dir=tmp_path, **{f"{EDGECO}.smooth": 0.2})
    _, b = one_step(plugins=[EDGECO], run_dir=tmp_path, **{f"{EDGECO}.smooth": 0.4})
    assert a["edge_fit"] > 0 and torch.allclose(2 * a["edge_fit"], b["edge_fit"]) and torch.equal(a["pixel"], b["pixel"])
    _, off = one_step(plugins=[EDGECO], run_dir=tmp_path, **{f"{EDGECO}.smooth": 0.0})
    assert off["edge_fit"].item() == 0.0


def test_module_path_options_of_an_installed_plugin_through_the_cli(myplug_module, jit_cli, tmp_path):
    """The issue's case: an installed plugin (entry point `myplug`) loaded by its module path, with options
    under that path: they take effect (term = coef x mean(x_hat^2)), not the defaults."""
    terms = {}
    for coef in ("0.1", "0.3"):
        run = tmp_path / f"run-{coef}"
        res = jit_cli("train", "--preset", "test", "--plugin", "jit_myplug.plugin", "--run-dir", str(run),
                      "train.max_steps=1", "sample.steps=1", f"jit_myplug.plugin.coef={coef}")
        assert res.exit_code == 0, res.output
        saved = json.loads((run / "config.json").read_text())
        assert saved["plugin_options"] == {"jit_myplug.plugin": {"coef": float(coef)}}
        terms[coef] = read_metrics(run)[-1]["loss/myterm"]
    assert terms["0.1"] > 0 and terms["0.3"] == pytest.approx(3 * terms["0.1"], rel=1e-5)


MYPLUG = '''
    from dataclasses import dataclass

    from jit_core import hookimpl
    from jit_core.config import plugin_options


    @dataclass
    class MyOptions:
        coef: float = 0.5


    @hookimpl
    def jit_options():
        return MyOptions


    @hookimpl
    def jit_loss_terms(step):
        err = (step.preds["pixel"] - step.images).detach()          # non-zero for a fresh (adaLN-Zero) model
        return {"myterm": plugin_options(step.config, MyOptions).coef * err.pow(2).mean()}
'''


@pytest.fixture
def myplug_module(jit_plugin_dist):
    jit_plugin_dist(MYPLUG, entry_name="myplug", module="jit_myplug.plugin", dist_name="jit-myplug")


def test_vco_and_repa_train_together_with_both_terms_logged(tmp_path, one_thread):
    result, metrics = train_tiny(tmp_path, plugins=["vco", "repa"], steps=2,
                                 **{**VCO_OPTS, "vco.drift_coef": 1.0, "repa.coef": 0.5})
    assert result.status == "finished" and len(metrics) == 2
    for m in metrics:
        assert {"loss/pixel", "loss/feature", "loss/hybrid", "loss/repa"} <= set(m)
        assert m["loss/repa"] > 0 and m["loss/hybrid"] != 0
    assert (result.checkpoint / "aux.safetensors").exists()                    # REPA's projector


@pytest.mark.parametrize("variant", ["structured", "label_drop", "input_dropout"])
def test_vco_null_branch_variants(variant, tmp_path, one_thread):
    """structured: pixel -> feature blocked, feature loss off for dropped samples; label_drop: neither;
    input_dropout: the dropped samples' feature input is zeros (the model sees it), no mask, loss kept."""
    tiny = tiny_model(["vco"], run_dir=str(tmp_path), **{**VCO_OPTS, "vco.null_branch": variant})
    model, hook, cfg = tiny.model, tiny.plugins.hook, tiny.config
    u = unconditional_form(hook, torch.tensor([1, 2, 3, 4]), DROP, model.streams, cfg, 10)
    assert u.labels.tolist() == [10, 2, 10, 4]
    assert (u.blocked is not None) == (variant == "structured")
    assert ("feature" in u.loss_masks) == (variant == "structured")
    assert set(u.null_inputs) == ({"feature"} if variant == "input_dropout" else set())
    if variant == "structured":
        assert u.blocked[:, 0, 1].tolist() == DROP.tolist() and u.blocked.sum() == DROP.sum()
    fed = []
    handle = model.register_forward_pre_hook(lambda m, args: fed.append(args[0]))
    try:
        torch.manual_seed(0)
        _, losses = training_losses(model, model.streams, images(), torch.tensor([1, 2, 3, 4]), cfg, hook, drop=DROP)
    finally:
        handle.remove()
    feature_in = fed[0]["feature"]
    zeroed = (feature_in == 0).flatten(1).all(1)
    assert zeroed.tolist() == (DROP.tolist() if variant == "input_dropout" else [False] * 4)
    assert losses["feature"] > 0


def test_a_null_branch_answers_only_for_its_own_streams():
    """merge() refuses a contribution about streams its plugin did not add, unknown streams, and a stream left
    with no key stream to attend to -- each naming the plugin."""
    from jit_core.diffusion import NullBranch, merge
    from jit_core.errors import PluginError
    from jit_core.model.streams import Stream, pixel_stream
    streams = [pixel_stream(1), Stream("feature", plugin="vco"), Stream("edges", plugin="edgeco")]
    labels = torch.arange(4)
    with pytest.raises(PluginError, match="plugin 'edgeco'.*concerns only streams it did not add"):
        merge(labels, DROP, streams, 10, [("edgeco", NullBranch(blocked=[("pixel", "feature")]))])
    with pytest.raises(PluginError, match="plugin 'edgeco'.*loss_masks concerns only streams it did not add"):
        merge(labels, DROP, streams, 10, [("edgeco", NullBranch(loss_masks={"pixel": torch.zeros(4)}))])
    with pytest.raises(PluginError, match="names stream 'edgez', which the model does not have"):
        merge(labels, DROP, streams, 10, [("edgeco", NullBranch(blocked=[("pixel", "edgez")]))])
    blind = [("edges", "pixel"), ("edges", "feature"), ("edges", "edges")]
    with pytest.raises(PluginError, match="stream 'edges' may see no key stream"):
        merge(labels, DROP, streams, 10, [("edgeco", NullBranch(blocked=blind))])
    u = merge(labels, DROP, streams, 10, [("edgeco", NullBranch(blocked=[("feature", "edges")]))])
    assert u.blocked[:, 1, 2].tolist() == DROP.tolist()      # another plugin's queries blind to *my* keys: allowed


def test_jit_sample_saves_each_plugin_stream(tmp_path, jit_cli, one_thread):
    from safetensors.torch import load_file
    result, _ = train_tiny(tmp_path, plugins=[EDGECO], steps=1)
    out = tmp_path / "samples"
    res = jit_cli("sample", str(result.run_dir), "--plugin", EDGECO, "--labels", "1,2,3", "--steps", "2",
                  "--out", str(out), "--streams")
    assert res.exit_code == 0, res.output
    saved = load_file(str(out / "stream-edges.safetensors"))
    assert saved["edges"].shape == (3, 64, 2) and saved["labels"].tolist() == [1, 2, 3]
    assert torch.isfinite(saved["edges"]).all() and len(list(out.glob("*.png"))) == 4      # 3 images + grid
    assert not (out / "stream-pixel.safetensors").exists()
