"""jit-redi-plugin: the PCA (against a direct eigendecomposition), its cache and every refusal, the stream's
shape and target, the representation drop (whole batch or nothing), gradients into the stream's weights,
representation guidance, composition with V-Co, exact resume. Tiny real runs (sklearn digits, JiT-T/4,
8x8 grid) with the real offline EfficientNet-Lite0."""
from __future__ import annotations

import os

import pytest
import torch
from jit_core.diffusion import GuidanceTerm
from jit_core.plugins import Plugins, installed_plugins
from jit_core.rng import plugin_generator
from jit_core.testing import nontrivial, tiny_setup
from vco_plugin.features import build_encoder

from jit_redi import pca
from jit_redi.pca import PcaCacheError

OFFLINE = {"redi.encoder": "efficientnet_lite0", "redi.pca_images": 16}


def test_installed_through_the_entry_point_and_off_until_enabled():
    ep = installed_plugins()["redi"]
    assert ep.value == "jit_redi.plugin" and ep.dist.name == "jit-redi-plugin"
    assert "redi" not in Plugins().infos


def test_pca_is_the_top_eigenvectors_and_projects_to_unit_variance_times_the_pixel_rms():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(6, 6, generator=g)
    tokens = torch.randn(40, 5, 6, generator=g) @ mix + 3          # (B, T, C), correlated, off-centre
    images = torch.rand(40, 1, 4, 4, generator=g) * 2 - 1
    basis = pca.fit(lambda x: tokens[: len(x)], [images], r=3)
    flat = tokens.flatten(0, 1).double()
    values, vectors = torch.linalg.eigh(torch.cov(flat.T, correction=0))
    for i in range(3):                                              # the same directions, up to sign
        assert abs(abs(float(basis.components[i].double() @ vectors[:, -1 - i])) - 1) < 1e-5
    torch.testing.assert_close(basis.variances.double(), values.flip(0)[:3], rtol=1e-5, atol=1e-6)
    out = basis.project(tokens).flatten(0, 1)
    torch.testing.assert_close(out.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.full((3,), basis.rms_pixels ** 2), rtol=1e-4, atol=0)
    assert (basis.components.abs().argmax(1) == basis.components.argmax(1)).all()   # signed: largest entry positive


def test_stream_shape_and_target_are_the_projected_encoder_tokens(tmp_path):
    setup = tiny_setup(plugins=["redi"], run_dir=tmp_path, **OFFLINE)
    (_, redi) = setup.model.streams
    assert (redi.name, redi.channels, setup.model.input_shape(redi)) == ("redi", 8, (64, 8))
    target = redi.normalize(redi.clean(setup.images, {}))
    by_hand = setup.plugins.runs["redi"].basis().project(build_encoder("efficientnet_lite0").target_tokens(
        setup.images, 8))
    assert target.shape == (len(setup.images), 64, 8)
    torch.testing.assert_close(target, by_hand)
    assert (setup.trainer.run_dir / "redi_pca.safetensors").is_file()


def test_the_cache_is_reused_and_refused_in_one_line_for_another_encoder_data_or_r(tmp_path):
    cache = tmp_path / "pca" / "redi.safetensors"
    first = tiny_setup(plugins=["redi"], **OFFLINE, **{"redi.pca": str(cache)})
    stamp = os.stat(cache).st_mtime_ns
    again = tiny_setup(plugins=["redi"], **{**OFFLINE, "redi.pca": str(cache), "redi.pca_images": 8})
    assert os.stat(cache).st_mtime_ns == stamp                      # read, not refitted
    assert torch.equal(again.plugins.runs["redi"].basis().components, first.plugins.runs["redi"].basis().components)

    with pytest.raises(PcaCacheError) as err:
        tiny_setup(plugins=["redi"], **OFFLINE, **{"redi.pca": str(cache), "redi.components": 4})
    msg = str(err.value)
    assert "\n" not in msg and "fitted for components=8, this run has components=4" in msg and "delete" in msg
    identity = dict(first.plugins.runs["redi"].basis().meta)
    for key, other in (("encoder", "dinov2"), ("data", "fashion_mnist (60000 training images)"),
                       ("weights", "/w/other.pth"), ("grid", 16)):
        with pytest.raises(PcaCacheError, match=f"fitted for {key}=.*this run has {key}="):
            pca.load(cache, {**identity, key: other})
    cache.write_bytes(b"garbage")
    with pytest.raises(PcaCacheError, match="unreadable"):
        tiny_setup(plugins=["redi"], **OFFLINE, **{"redi.pca": str(cache)})


def _drops(run, batch=6, steps=200):
    out = []
    for step in range(steps):
        gen = plugin_generator(0, step, "redi", 0, "step", "cpu")
        branch = run.jit_null_branch(drop=torch.zeros(batch, dtype=torch.bool), training=True, generator=gen)
        out.append(branch)
    return out


def test_the_representation_drop_takes_the_whole_batch_or_nothing():
    setup = tiny_setup(plugins=["redi"], **OFFLINE, **{"redi.rep_drop": 0.3})
    run = setup.plugins.runs["redi"]
    branches = _drops(run)
    rows = torch.stack([b.drop for b in branches])
    assert rows.all(1).logical_or(~rows.any(1)).all()                  # per batch: all rows or none
    assert 0.2 < rows.all(1).float().mean() < 0.4                      # ~ rep_drop
    for b in branches:
        assert torch.equal(b.loss_masks["redi"], (~b.drop).float()) and float(b.inputs["redi"]) == 0
    assert run.jit_null_branch(drop=torch.ones(4, dtype=torch.bool), training=False, generator=None) is None

    _, always = tiny_setup(plugins=["redi"], **OFFLINE, **{"redi.rep_drop": 1.0}).step()
    _, never = tiny_setup(plugins=["redi"], **OFFLINE, **{"redi.rep_drop": 0.0}).step()
    assert always["redi"] == 0 and never["redi"] > 0 and always["pixel"] > 0


def test_gradients_reach_the_representation_weights_and_none_the_encoder():
    setup = tiny_setup(plugins=["redi"], **OFFLINE, **{"redi.rep_drop": 0.0})
    nontrivial(setup.model)
    _, losses = setup.step()
    (losses["redi"] + losses["pixel"]).backward()
    own = {n: p for n, p in setup.model.named_parameters() if "redi" in n or n.startswith("fusion.")}
    assert {n.split(".")[0] for n in own} == {"embedders", "heads", "fusion"}
    missing = [n for n, p in own.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    assert all(p.grad is None for p in setup.plugins.runs["redi"].encoder("cpu").parameters())


def test_the_representation_is_channel_concatenated_into_the_pixel_tokens():
    """One token sequence: no block holds weights of its own for the representation, and the pixel prediction
    reads the representation channels of the same tokens."""
    setup = tiny_setup(plugins=["redi"], **OFFLINE)
    model = nontrivial(setup.model).eval()
    assert model.streams[1].fusion == "channel_concat" and model.streams[1].fusion_blocks == 0
    assert not [n for n, _ in model.named_parameters() if n.startswith("blocks.") and "redi" in n]
    g = torch.Generator().manual_seed(0)
    z = {"pixel": torch.randn(2, 1, 32, 32, generator=g), "redi": torch.randn(2, 64, 8, generator=g)}
    t, y = torch.full((2,), 0.5), torch.tensor([1, 2])
    with torch.no_grad():
        a = model(z, t, y).x_hat["pixel"]
        b = model({**z, "redi": torch.zeros_like(z["redi"])}, t, y).x_hat["pixel"]
    assert (a - b).abs().max() > 1e-4
    joint = tiny_setup(plugins=["redi"], **OFFLINE, **{"redi.fusion": "joint"}).model
    assert any(n.startswith("blocks.") and "redi" in n for n, _ in joint.named_parameters())


def test_representation_guidance_is_a_term_against_the_zeroed_representation():
    off = tiny_setup(plugins=["redi"], **OFFLINE).plugins.runs["redi"]
    assert off.jit_guidance_terms() is None                             # w_r = 0: no extra forward
    on = tiny_setup(plugins=["redi"], **OFFLINE, **{"redi.rep_guidance": 1.5}).plugins.runs["redi"]
    (term,) = on.jit_guidance_terms()
    assert isinstance(term, GuidanceTerm) and term.weight == 1.5 and term.inputs == {"redi": 0.0}


def test_with_vco_channel_concatenation_is_refused_in_one_line_and_joint_composes():
    from jit_core.config import ConfigError
    vco = {"vco.encoder": "efficientnet_lite0", "vco.groups_per_step": 2, "vco.calib_images": 16}
    with pytest.raises(ConfigError) as err:
        tiny_setup(plugins=["vco", "redi"], **OFFLINE, **vco)
    assert "\n" not in str(err.value) and "--plugin vco adds another: set redi.fusion=joint" in str(err.value)
    setup = tiny_setup(plugins=["vco", "redi"], **OFFLINE, **vco, **{"redi.fusion": "joint"})
    assert [s.name for s in setup.model.streams] == ["pixel", "feature", "redi"]
    _, losses = setup.step()
    assert {"pixel", "feature", "redi", "hybrid"} <= set(losses) and all(torch.isfinite(v) for v in losses.values())


def test_resumes_bit_identically(tmp_path):
    from jit_core.testing import check_resumes_bit_identically
    check_resumes_bit_identically(tmp_path, plugins=["redi"], steps=4, **OFFLINE, **{"redi.rep_drop": 0.5})


def test_study_is_registered_with_jit_and_vco_arms():
    from jit_redi.study import studies
    study = studies()["redi-tiny"]
    assert [a.name for a in study.arms] == ["JiT", "ReDi", "V-Co"] and study.baseline == "JiT"
    assert study.seeds == (0, 1, 2) and study.arm("ReDi").changes == ("plugins", "redi.*")


def test_jit_study_dry_run_lists_the_three_arms(jit_cli):
    res = jit_cli("study", "redi-tiny", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "3 arms x 3 seeds = 9 runs" in res.output and all(a in res.output for a in ("JiT", "ReDi", "V-Co"))


def test_sampling_with_representation_guidance_goes_through_the_plugin():
    """The real plugin's term reaches the sampler (no PCA is needed to sample): w_r changes the images, w_r = 0
    is plain sampling."""
    from jit_core.diffusion import sample
    from jit_core.testing import tiny_model
    labels = torch.tensor([0, 3])

    def images(w):
        tm = tiny_model(plugins=["redi"], **OFFLINE, **{"redi.rep_guidance": w})
        return sample(tm.model, labels, hook=tm.plugins.hook, config=tm.config, steps=2, cfg=1.0,
                      generator=torch.Generator().manual_seed(0))
    plain, guided = images(0.0), images(2.0)
    assert torch.isfinite(guided).all() and (plain - guided).abs().max() > 1e-4


@pytest.mark.slow
def test_a_run_stopped_and_resumed_in_fresh_processes_is_bit_identical(tmp_path):
    """``jit train`` processes, as a user runs them: 4 steps straight vs 2 steps then ``--resume`` to 4 in a new
    process (the resumed process reads the PCA cache back and redraws the per-batch drops from the step's
    generator). Every logged loss and every saved tensor must be equal."""
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file
    common = ["redi.encoder=efficientnet_lite0", "redi.pca_images=16", "redi.rep_drop=0.5", "optim.batch_size=8",
              "train.log_every=1", "train.ckpt_every=2", "sample.steps=1", "sample.batch_size=40"]

    def jit(*args):
        out = subprocess.run([sys.executable, "-m", "jit_core", *args], check=False, capture_output=True, text=True,
                             timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", "JIT_PROGRESS": "plain"})
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    straight, cut = tmp_path / "straight", tmp_path / "cut"
    jit("train", "--preset", "test", "--plugin", "redi", "--run-dir", str(straight), "train.max_steps=4", *common)
    jit("train", "--preset", "test", "--plugin", "redi", "--run-dir", str(cut), "train.max_steps=2", *common)
    jit("train", "--resume", str(cut), "train.max_steps=4")

    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return [{k: v for k, v in r.items() if k.startswith("loss")} for r in rows]
    assert losses(cut) == losses(straight) and len(losses(straight)) == 4
    assert any(r["loss/redi"] == 0 for r in losses(straight)) and any(r["loss/redi"] > 0 for r in losses(straight))

    def last(run):
        return max(p for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    for name in ("model", "ema1", "ema2"):
        a, b = load_file(str(last(straight) / f"{name}.safetensors")), load_file(str(last(cut) / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
