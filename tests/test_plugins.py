"""The plugin system end to end: every hook is called where hookspecs.py says, firstresult hooks
pick the right provider, installed plugins change nothing until enabled, entry-point discovery,
`jit plugins`, and errors that name the plugin. Uses jit_core.testing (the plugin authors' helpers)
on the smallest real run (sklearn digits, JiT-T/4, 2 steps).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from jit_core import hookspecs
from jit_core.config import ConfigError, get_preset
from jit_core.diffusion import NullBranch, StepState, guidance_scales
from jit_core.model import JiT, get_model_config
from jit_core.model.streams import Stream
from jit_core.plugins import DISABLE_ENV, PluginError, Plugins, describe_all, installed_plugins
from jit_core.plugins.hookref import documented_hook_reference, hook_names, hook_reference_markdown
from jit_core.testing import (
    RecordingPlugin,
    one_step,
    tiny_config,
    tiny_setup,
    train_tiny,
)

pytest_plugins = ["jit_core.testing"]

ROOT = Path(__file__).resolve().parents[1]
B = 8            # tiny_config's batch
GRID = 8         # JiT-T/4 on 32 px


def edges(images: torch.Tensor) -> torch.Tensor:
    """A cheap 2-channel token target on the 8x8 grid: 4x4 means and their squares."""
    m = torch.nn.functional.avg_pool2d(images.float(), 4).flatten(2).transpose(1, 2)   # (B, 64, 1)
    return torch.cat([m, m * m], dim=-1)


def edges_stream(name: str = "edges") -> Stream:
    return Stream(name, kind="tokens", channels=2, loss_weight=0.1, target=edges)


@dataclasses.dataclass
class RecOptions:
    coef: float = 0.5
    note: str = "hi"


# A throwaway third-party plugin, installed through a *.dist-info folder on sys.path.
MYPLUG = '''
    from dataclasses import dataclass

    import click

    from jit_core import hookimpl
    from jit_core.config import get_preset, plugin_options

    __version__ = "0.3.1"
    CALLS = []


    @dataclass
    class MyOptions:
        coef: float = 0.5
        note: str = "hi"


    @hookimpl
    def jit_options():
        return MyOptions


    @hookimpl
    def jit_presets():
        CALLS.append("jit_presets")

        def factory():
            cfg = get_preset("test")
            cfg.plugins = ["myplug"]
            return cfg
        return {"myplug-test": factory}


    @hookimpl
    def jit_add_commands(cli):
        CALLS.append("jit_add_commands")

        @cli.command("myplug-hello")
        def hello():
            """Say hello."""
            click.echo("hello from myplug")


    @hookimpl
    def jit_loss_terms(step):
        coef = plugin_options(step.config, MyOptions).coef
        return {"myterm": coef * step.preds["pixel"].float().pow(2).mean()}
'''
MYPLUG_HOOKS = ["jit_add_commands", "jit_loss_terms", "jit_options", "jit_presets"]


@pytest.fixture
def myplug(jit_plugin_dist):
    """The throwaway plugin, installed as distribution jit-myplug 0.3.1, entry point `myplug`."""
    jit_plugin_dist(MYPLUG, entry_name="myplug", module="jit_myplug.plugin", dist_name="jit-myplug", version="0.3.1")
    return "myplug"


# ----------------------------------------------------------------------------------- helpers themselves
def test_recording_plugin_implements_every_hook_with_its_signature():
    names = hook_names()
    assert set(names) == {n for n in dir(hookspecs) if n.startswith("jit_")} and len(names) == 17
    rec = RecordingPlugin()
    for name in names:
        spec = list(inspect.signature(getattr(hookspecs, name)).parameters)
        assert list(inspect.signature(getattr(rec, name)).parameters) == spec, name
    with pytest.raises(ValueError, match="jit_los_terms"):
        RecordingPlugin(returns={"jit_los_terms": {}})


def test_testing_reexports_the_recorder_and_the_hook_reference():
    """jit_core.testing is the plugin authors' front door: every name in its __all__ is importable
    from it, including those defined in jit_core.plugins.recording and jit_core.plugins.hookref."""
    import jit_core.plugins.hookref
    import jit_core.plugins.recording
    import jit_core.testing

    assert all(hasattr(jit_core.testing, name) for name in jit_core.testing.__all__)
    assert jit_core.testing.RecordingPlugin is jit_core.plugins.recording.RecordingPlugin
    assert jit_core.testing.HookCall is jit_core.plugins.recording.HookCall
    assert jit_core.testing.hook_reference_markdown is jit_core.plugins.hookref.hook_reference_markdown
    assert (jit_core.testing.HOOKS_START, jit_core.testing.HOOKS_END) == (jit_core.plugins.hookref.HOOKS_START,
                                                                          jit_core.plugins.hookref.HOOKS_END)


def test_tiny_config_is_the_small_real_run():
    cfg = tiny_config(["vco"], steps=2, optim__lr=2e-3, **{"train.seed": 3, "vco.drift_coef": 0})
    assert (cfg.model, cfg.data.name, cfg.train.attention, cfg.train.precision, cfg.train.device) == \
        ("JiT-T/4", "digits", "exact", "fp32", "cpu")
    assert (cfg.optim.batch_size, cfg.train.max_steps, cfg.optim.lr, cfg.train.seed) == (B, 2, 2e-3, 3)
    assert cfg.plugins == ["vco"] and cfg.plugin_options == {"vco": {"drift_coef": 0}}


def test_hook_reference_in_docs_is_generated_from_the_docstrings(monkeypatch):
    """docs/plugins.md holds hook_reference_markdown() between its markers: regenerate with
    `python -m jit_core.plugins.hookref --update-docs docs/plugins.md` after editing hookspecs.py."""
    generated = hook_reference_markdown()
    assert [line[4:] for line in generated.splitlines() if line.startswith("### ")] == hook_names()
    assert "`jit_null_branch(drop, streams, config, training, generator)` — *per step, every plugin*" in generated
    assert "`jit_batch_sampler(dataset, config, rank, world_size, seed)` — *run set-up, one plugin*" in generated
    monkeypatch.setattr(hookspecs.jit_loss_terms, "__doc__", "Changed ``here``.")
    assert "Changed `here`." in hook_reference_markdown()
    monkeypatch.undo()
    assert documented_hook_reference(ROOT / "docs" / "plugins.md") == generated, \
        "docs/plugins.md is out of date: python -m jit_core.plugins.hookref --update-docs docs/plugins.md"


# ----------------------------------------------------------------------------------- hooks are called where documented
def test_every_training_and_sampling_hook_is_called_where_documented(tmp_path):
    rec = RecordingPlugin(
        returns={"jit_streams": [edges_stream()], "jit_capture_blocks": [1]},
        handlers={"jit_trainable_modules": lambda config, model: {"probe": nn.Linear(model.cfg.hidden_size, 1)},
                  "jit_loss_terms": lambda step, generator: {
                      "probe": 1e-3 * step.aux["probe"](step.hidden[1]["pixel"]).pow(2).mean()}})
    result, metrics = train_tiny(tmp_path, extra_plugins=[rec], steps=2, **{"diffusion.label_drop_prob": 0.5})
    assert result.status == "finished" and result.step == 2

    # start-up, in the trainer's order: options (at registration), the sampler (a start-up check, before the
    # run folder is written), streams, modules, blocks
    assert rec.called("jit_options")
    startup = [n for n in rec.names() if n in ("jit_streams", "jit_trainable_modules", "jit_capture_blocks",
                                                "jit_batch_sampler")]
    assert startup == ["jit_batch_sampler", "jit_streams", "jit_trainable_modules", "jit_capture_blocks"]
    (streams,) = rec.calls_of("jit_streams")
    assert streams.keys == ("config", "model_config") and streams.kwargs["model_config"].grid == GRID
    (mods,) = rec.calls_of("jit_trainable_modules")
    assert mods.keys == ("config", "model") and isinstance(mods.kwargs["model"], JiT)
    assert [s.name for s in mods.kwargs["model"].streams] == ["pixel", "edges"]
    assert rec.calls_of("jit_capture_blocks")[0].keys == ("config",)
    (sampler,) = rec.calls_of("jit_batch_sampler")
    assert sampler.keys == ("config", "dataset", "rank", "seed", "world_size")
    assert (sampler.kwargs["rank"], sampler.kwargs["world_size"], len(sampler.kwargs["dataset"])) == (0, 1, 1797)

    # every step: the unconditional branch, then the loss terms; each with the plugin's generator of the step
    step_hooks = ("jit_null_branch", "jit_loss_terms")
    train_calls = [c for c in rec.calls if c.name in step_hooks][:4]
    assert [c.name for c in train_calls] == ["jit_null_branch", "jit_loss_terms"] * 2

    null = rec.calls_of("jit_null_branch")
    train_null, sample_null = null[:2], null[2:]
    for c in train_null:       # training: drop ~ Bernoulli(label_drop_prob)
        assert c.keys == ("config", "drop", "generator", "streams", "training") and c.kwargs["training"] is True
        assert c.kwargs["drop"].dtype == torch.bool and c.kwargs["drop"].shape == (B,)
        assert isinstance(c.kwargs["generator"], torch.Generator)
        assert [(s.name, s.plugin) for s in c.kwargs["streams"]] == [("pixel", ""), ("edges", "recorder")]
    assert sample_null and all(c.kwargs["drop"].all() and not c.kwargs["training"] for c in sample_null)  # CFG
    assert sample_null[0].kwargs["drop"].shape == (40,)

    # loss terms see the whole step
    terms = rec.calls_of("jit_loss_terms")
    assert len(terms) == 2 and terms[0].keys == ("generator", "step")
    step = terms[0].kwargs["step"]
    assert isinstance(step, StepState) and (step.global_step, step.rank, step.training) == (0, 0, True)
    assert terms[1].kwargs["step"].global_step == 1
    assert terms[0].kwargs["generator"] is train_null[0].kwargs["generator"]    # one generator per plugin per step
    assert set(step.targets) == set(step.noisy) == set(step.preds) == {"pixel", "edges"}
    assert set(step.losses) == {"pixel", "edges"} and step.preds["pixel"].requires_grad
    assert set(step.hidden) == {1} and step.hidden[1]["pixel"].shape == (B, GRID ** 2, 64)
    assert step.hidden[1]["edges"].shape == (B, GRID ** 2, 64) and "probe" in step.aux

    # sampling (the end-of-training grid, one sampler call): the unconditional form of the batch, guidance terms
    after_training = rec.names()[len(rec.names()) - rec.names()[::-1].index("jit_loss_terms"):]
    assert after_training == ["jit_null_branch", "jit_guidance_terms"]

    # every term is logged as loss/<name>; the trainable module is checkpointed
    assert len(metrics) == 2
    for m in metrics:
        assert {"loss", "loss/pixel", "loss/edges", "loss/probe"} <= set(m)
    assert (result.checkpoint / "aux.safetensors").exists()
    # installed-only hooks are not called for objects passed in extra_plugins
    assert not rec.called("jit_presets") and not rec.called("jit_add_commands")


def test_presets_and_commands_come_from_installed_plugins_through_the_cli(myplug, jit_cli):
    import sys
    res = jit_cli("presets")
    assert res.exit_code == 0, res.output
    assert "myplug-test" in res.output and "plugins=myplug" in res.output
    res = jit_cli("myplug-hello")
    assert res.exit_code == 0 and "hello from myplug" in res.output, res.output
    assert "myplug-hello" in jit_cli("--help").output
    calls = sys.modules["jit_myplug.plugin"].CALLS
    assert "jit_presets" in calls and "jit_add_commands" in calls
    res = jit_cli("train", "--preset", "myplug-test", "--dry-run")
    assert res.exit_code == 0 and json.loads(res.output)["plugins"] == ["myplug"]


# ----------------------------------------------------------------------------------- per stream, one plugin
class Doubled(Stream):
    """A stream with behaviour of its own: doubled targets, a CFG scale of 7, its loss off when dropped."""

    def normalize(self, clean):
        return clean * 2

    def guidance_scale(self, scale):
        return 1.0 if scale == 1.0 else 7.0

    def null_branch(self, drop, streams, training):
        return NullBranch(loss_masks={self.name: (~drop).float()})


def test_streams_carry_their_behaviour_with_jits_defaults_in_the_base_class_and_one_batch_sampler():
    """Stream.clean / normalize / guidance_scale / null_branch: the base class is JiT (the images, as they are,
    the pixel scale, no null branch); a subclass overrides. jit_batch_sampler: one plugin, else the core's."""
    cfg, mc = tiny_config(), get_model_config("JiT-T/4", in_channels=1)
    x = torch.randn(4, 1, 32, 32)
    sampler = object()
    owner = RecordingPlugin("owner", returns={"jit_streams": [Doubled("edges", channels=2, target=edges)],
                                              "jit_batch_sampler": sampler})
    pl = Plugins(extra=[owner])
    pixel, doubled = pl.streams(cfg, mc)
    assert (pixel.plugin, doubled.plugin) == ("", "owner") and isinstance(doubled, Doubled)
    values = {}
    assert pixel.normalize(pixel.clean(x, values)) is x and values == {}               # JiT: the images
    assert torch.equal(doubled.normalize(doubled.clean(x, values)), edges(x) * 2)
    assert guidance_scales([pixel, doubled], 3.0) == {"pixel": 3.0, "edges": 7.0}
    assert guidance_scales([pixel, doubled], 1.0) == {"pixel": 1.0, "edges": 1.0}
    assert pixel.null_branch(torch.ones(4, dtype=torch.bool), [pixel, doubled], True) is None
    assert pl.batch_sampler(None, cfg, 0, 1, 0) is sampler
    plain = Stream("plain", guidance=False)
    assert plain.guidance_scale(3.0) == 1.0 and plain.num_tokens(8) == 64
    assert Stream("coarse", grid=4).num_tokens(8) == 16 and Stream("glob", tokens=2).num_tokens(8) == 2
    with pytest.raises(ValueError, match="not both"):
        Stream("x", grid=4, tokens=2)
    silent = Plugins(extra=[RecordingPlugin("silent", returns={"jit_streams": [edges_stream()]})])
    assert silent.batch_sampler(None, cfg, 0, 1, 0) is None                              # -> DefaultBatchSampler


def test_two_batch_samplers_fail_at_start_up_naming_both_plugins(tmp_path):
    a = RecordingPlugin("alpha", returns={"jit_batch_sampler": object()})
    b = RecordingPlugin("beta", returns={"jit_batch_sampler": object()})
    with pytest.raises(PluginError, match="plugins 'alpha' and 'beta' both answer jit_batch_sampler"):
        train_tiny(tmp_path, extra_plugins=[a, b])
    assert not any(tmp_path.iterdir())                         # before the run folder is touched


def test_null_branch_and_sampler_results_are_what_training_uses(tmp_path):
    masked = RecordingPlugin("masker", returns={"jit_streams": [edges_stream()]},
                             handlers={"jit_null_branch": lambda drop, **kw:
                                       NullBranch(loss_masks={"edges": torch.zeros(len(drop))})})
    _, losses = one_step(extra_plugins=[masked], run_dir=tmp_path)
    assert losses["edges"].item() == 0.0 and losses["pixel"].item() > 0      # every sample's edges loss off

    class FirstEight:
        def __iter__(self):
            yield list(range(8))

        def __len__(self):
            return 1

        def set_epoch(self, epoch):
            pass

    setup = tiny_setup(extra_plugins=[RecordingPlugin("sampler", returns={"jit_batch_sampler": FirstEight()})],
                       batch_size=8, run_dir=tmp_path)
    assert setup.labels.tolist() == setup.trainer.dataset.targets[:8].tolist()


# ----------------------------------------------------------------------------------- off until enabled
def test_installed_plugins_change_nothing_until_enabled(tmp_path, jit_cli):
    """`jit train` with vco (and any other plugin) installed -- the CLI imports every installed plugin
    for its presets -- trains bit-identical weights to the same run with entry points ignored."""
    assert "vco" in installed_plugins()
    args = ["train", "--preset", "test", "train.max_steps=2", "sample.steps=1"]
    on = jit_cli(*args, "--run-dir", str(tmp_path / "installed"))
    off = jit_cli(*args, "--run-dir", str(tmp_path / "autoload-off"), env={DISABLE_ENV: "1"})
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    for name in ("model", "ema1", "ema2"):
        a = (tmp_path / "installed" / "checkpoints" / "step-00000002" / f"{name}.safetensors").read_bytes()
        b = (tmp_path / "autoload-off" / "checkpoints" / "step-00000002" / f"{name}.safetensors").read_bytes()
        assert a == b, name
    cfg_a, cfg_b = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("installed", "autoload-off"))
    assert cfg_a.pop("run_dir") != cfg_b.pop("run_dir") and cfg_a == cfg_b and cfg_a["plugins"] == []


# ----------------------------------------------------------------------------------- discovery and listing
def test_entry_point_discovery_listing_and_autoload_switch(myplug, jit_cli, monkeypatch):
    ep = installed_plugins()["myplug"]
    assert ep.value == "jit_myplug.plugin" and ep.dist.name == "jit-myplug"
    assert "myplug" not in Plugins().infos                       # installed, but off until enabled
    pl = Plugins(["myplug"])
    assert pl.pm.get_plugin("myplug") is not None
    assert [i.plugin_name for i in pl.pm.hook.jit_loss_terms.get_hookimpls()] == ["myplug"]

    (info,) = [i for i in describe_all() if i.name == "myplug"]
    assert (info.enabled, info.version, info.source) == (False, "0.3.1", "entry point jit-myplug")
    assert info.hooks == MYPLUG_HOOKS and info.options == {"coef": 0.5, "note": "hi"}
    assert [i.enabled for i in describe_all(["myplug"]) if i.name == "myplug"] == [True]

    text = jit_cli("plugins").output
    assert "myplug 0.3.1 [installed, off (enable with --plugin myplug)]" in text and "myplug.coef=0.5" in text
    assert "from: entry point jit-myplug" in text and f"hooks: {', '.join(MYPLUG_HOOKS)}" in text

    # JIT_DISABLE_PLUGIN_AUTOLOAD hides entry points; module paths still load
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert "myplug" not in installed_plugins() and installed_plugins() == {}
    with pytest.raises(PluginError, match=DISABLE_ENV):
        Plugins(["myplug"])
    assert "myplug" not in jit_cli("plugins").output
    assert json.loads(jit_cli("plugins", "--json").output) == []
    pl = Plugins(["jit_myplug.plugin"])
    info = pl.infos["jit_myplug.plugin"]
    assert info.source.startswith("module ") and info.version == "0.3.1" and info.hooks == MYPLUG_HOOKS


def test_no_autoload_fixture_hides_installed_plugins(jit_no_autoload):
    assert installed_plugins() == {} and Plugins().infos == {}
    with pytest.raises(PluginError, match=f"unknown plugin 'vco'.*{DISABLE_ENV} is set"):
        Plugins(["vco"])


def test_the_worked_example_trains_with_an_installed_plugin_and_logs_its_term(myplug, jit_cli, tmp_path):
    run = tmp_path / "run"
    res = jit_cli("train", "--preset", "test", "--plugin", "myplug", "--run-dir", str(run),
                  "train.max_steps=2", "train.log_every=1", "sample.steps=1", "myplug.coef=0.25")
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all("loss/myterm" in r for r in records)
    saved = json.loads((run / "config.json").read_text())
    assert saved["plugins"] == ["myplug"] and saved["plugin_options"]["myplug"] == {"coef": 0.25, "note": "hi"}


def test_bad_option_of_an_installed_plugin_fails_at_start_up_on_the_command_line(myplug, jit_cli, tmp_path):
    run = tmp_path / "run"
    res = jit_cli("train", "--preset", "test", "--plugin", "myplug", "--run-dir", str(run), "myplug.coef=abc")
    assert res.exit_code != 0 and "myplug.coef" in res.output and "float" in res.output
    res = jit_cli("train", "--preset", "test", "--plugin", "myplug", "--run-dir", str(run), "myplug.cof=1")
    assert res.exit_code != 0 and "did you mean 'coef'" in res.output
    assert not run.exists()


# ----------------------------------------------------------------------------------- errors name the plugin
def test_an_exception_inside_a_hook_names_the_plugin_and_the_hook(jit_one_step):
    boom = RecordingPlugin("exploder", handlers={"jit_loss_terms": lambda step, **kw: {"x": 1 / 0}})
    with pytest.raises(PluginError, match=r"plugin 'exploder' failed in hook jit_loss_terms: ZeroDivisionError") as e:
        jit_one_step(extra_plugins=[boom])
    assert isinstance(e.value.__cause__, ZeroDivisionError)

    class BadNormalize(Stream):
        def normalize(self, clean):
            raise RuntimeError("calibration missing")
    boom = RecordingPlugin("calibrator", returns={"jit_streams": [BadNormalize("edges", channels=2, target=edges)]})
    with pytest.raises(PluginError, match=r"'calibrator' failed in stream 'edges': RuntimeError: calibration"):
        jit_one_step(extra_plugins=[RecordingPlugin("bystander"), boom])


def test_two_plugins_adding_a_stream_with_the_same_name_fail_naming_both():
    cfg, mc = tiny_config(), get_model_config("JiT-T/4", in_channels=1)
    a = RecordingPlugin("alpha", returns={"jit_streams": [edges_stream()]})
    b = RecordingPlugin("beta", returns={"jit_streams": [edges_stream()]})
    with pytest.raises(PluginError, match="stream 'edges' is added by both") as e:
        Plugins(extra=[a, b]).streams(cfg, mc)
    assert "'alpha'" in str(e.value) and "'beta'" in str(e.value)
    with pytest.raises(PluginError, match="'pixel' is added by both 'jit_core' and 'alpha'"):
        Plugins(extra=[RecordingPlugin("alpha", returns={"jit_streams": [edges_stream("pixel")]})]).streams(cfg, mc)
    assert [s.name for s in Plugins(extra=[a]).streams(cfg, mc)] == ["pixel", "edges"]


def test_unknown_plugin_name_suggests_the_nearest(tmp_path):
    with pytest.raises(PluginError, match=r"unknown plugin 'vcoo' \(did you mean 'vco'\?\)"):
        Plugins(["vcoo"])
    with pytest.raises(PluginError, match="did you mean 'vco'"):
        train_tiny(tmp_path, plugins=["vco0"])
    assert not (tmp_path / "run").exists()


def test_misspelled_hook_fails_at_registration_naming_the_plugin():
    class Typo:
        __name__ = "typo"

        @hookspecs.hookimpl
        def jit_los_terms(self, step):
            return {}

    with pytest.raises(PluginError, match=r"plugin 'typo' implements an unknown hook.*jit_los_terms") as e:
        Plugins(extra=[Typo()])
    assert "jit_loss_terms" in str(e.value)          # the known hooks are listed


def test_unknown_or_ill_typed_plugin_option_fails_before_any_compute(tmp_path):
    rec = RecordingPlugin("rec", returns={"jit_options": RecOptions})
    with pytest.raises(ConfigError, match=r"bad value 'abc' for rec\.coef: expected float"):
        train_tiny(tmp_path, extra_plugins=[rec], **{"rec.coef": "abc"})
    with pytest.raises(ConfigError, match=r"unknown option 'rec\.cof' of plugin 'rec' \(did you mean 'coef'\?\)"):
        train_tiny(tmp_path, extra_plugins=[rec], **{"rec.cof": 1})
    with pytest.raises(ConfigError, match="option nobody.coef: 'nobody' is not an enabled plugin"):
        train_tiny(tmp_path, extra_plugins=[rec], **{"nobody.coef": 1})
    assert not rec.called("jit_streams") and not any(tmp_path.iterdir())     # nothing built, nothing written
    cfg = tiny_config(**{"rec.coef": "0.25"})
    setup = tiny_setup(extra_plugins=[rec], config=cfg, run_dir=tmp_path)
    assert setup.config.plugin_options["rec"] == RecOptions(coef=0.25, note="hi")   # coerced, defaults filled in
    assert cfg.plugin_options["rec"] == {"coef": "0.25"}                  # the caller's config: only read


def test_loss_term_named_like_a_stream_is_rejected(jit_one_step):
    rec = RecordingPlugin("clash", handlers={"jit_loss_terms": lambda step, **kw: {"pixel": step.losses["pixel"] * 0}})
    with pytest.raises(ValueError, match="loss term 'pixel' of plugin 'clash' clashes with stream 'pixel'"):
        jit_one_step(extra_plugins=[rec])


# ----------------------------------------------------------------------------------- edge cases
def test_jit_plugins_json_lists_installed_plugins(myplug, jit_cli):
    res = jit_cli("plugins", "--json")
    assert res.exit_code == 0, res.output
    (row,) = [r for r in json.loads(res.output) if r["name"] == "myplug"]
    assert row == {"name": "myplug", "source": "entry point jit-myplug", "version": "0.3.1", "enabled": False,
                   "hooks": MYPLUG_HOOKS, "options": {"coef": 0.5, "note": "hi"}}


STREAMS_SUBSET = '''
    from jit_core import Stream, hookimpl


    @hookimpl
    def jit_streams(config):          # a subset of the spec's arguments, as hookspecs.py allows
        return [Stream("edges", channels=2, target=lambda images: None)]


    @hookimpl
    def jit_null_branch(drop):
        return None
'''


def test_jit_streams_implementation_may_take_a_subset_of_the_arguments(jit_plugin_dist):
    jit_plugin_dist(STREAMS_SUBSET, module="jit_subset.plugin", entry_name="subset")
    cfg = tiny_config()
    assert [s.name for s in Plugins(["jit_subset.plugin"]).streams(cfg, get_model_config("JiT-T/4"))] == \
        ["pixel", "edges"]


def test_an_exception_in_jit_streams_names_the_plugin():
    def bad(config, model_config):
        raise RuntimeError("no encoder")
    with pytest.raises(PluginError, match="'streamer' failed in hook jit_streams"):
        Plugins(extra=[RecordingPlugin("streamer", handlers={"jit_streams": bad})]).streams(
            tiny_config(), get_model_config("JiT-T/4"))


UNMARKED = '''
    def jit_los_terms(step):          # misspelled, and no @hookimpl
        return {"x": 0}
'''


def test_a_jit_function_that_is_not_a_hook_implementation_fails_at_registration(jit_plugin_dist):
    jit_plugin_dist(UNMARKED, module="jit_unmarked.plugin", entry_name="unmarked")
    with pytest.raises(PluginError, match="jit_los_terms"):
        Plugins(["jit_unmarked.plugin"])


@dataclasses.dataclass
class Pep604Options:
    n: int | None = None


def test_pep604_optional_plugin_option_is_type_checked(tmp_path):
    rec = RecordingPlugin("pep604", returns={"jit_options": Pep604Options})
    setup = tiny_setup(extra_plugins=[rec], config=tiny_config(**{"pep604.n": "3"}), run_dir=tmp_path / "a")
    assert setup.config.plugin_options["pep604"].n == 3
    with pytest.raises(ConfigError, match="pep604.n"):
        one_step(extra_plugins=[rec], config=tiny_config(**{"pep604.n": "abc"}), run_dir=tmp_path)


BROKEN = '''
    raise ImportError("this plugin is broken")
'''


def test_a_broken_installed_plugin_that_is_not_enabled_does_not_break_jit_train(jit_plugin_dist, jit_cli):
    jit_plugin_dist(BROKEN, module="jit_broken.plugin", entry_name="broken")
    res = jit_cli("train", "--preset", "test", "--dry-run")
    assert res.exit_code == 0 and "plugin 'broken'" in res.output and "this plugin is broken" in res.output
    with pytest.raises(PluginError, match="plugin 'broken' .*failed to import: this plugin is broken"):
        Plugins(["broken"])


def test_a_broken_installed_plugin_does_not_break_jit_plugins(jit_plugin_dist, jit_cli):
    jit_plugin_dist(BROKEN, module="jit_broken.plugin", entry_name="broken")
    res = jit_cli("plugins")
    assert res.exit_code == 0 and "vco" in res.output and "broken" in res.output


def test_a_plugin_can_be_given_as_a_py_file(tmp_path):
    path = tmp_path / "quick_plugin.py"
    path.write_text("from jit_core import hookimpl\n\n@hookimpl\ndef jit_capture_blocks(config):\n    return [0]\n")
    assert Plugins([str(path)]).hook.jit_capture_blocks(config=get_preset("test")) == [[0]]


def test_a_plugin_loaded_by_module_path_can_be_given_options(myplug):
    from jit_core.config import resolve, set_key
    cfg = tiny_config(["jit_myplug.plugin"])
    set_key(cfg, "jit_myplug.plugin.coef", "0.25")
    assert resolve(cfg, Plugins(cfg.plugins).option_schemas()).plugin_options["jit_myplug.plugin"].coef == 0.25


def test_jit_plugins_fails_for_a_plugin_that_does_not_load(jit_cli):
    res = jit_cli("plugins", "--plugin", "no_such_module")
    assert res.exit_code == 1 and "unknown plugin 'no_such_module'" in res.output, res.output
    res = jit_cli("plugins", "--plugin", "no_such_pkg.plugin")
    assert res.exit_code == 1 and "could not be imported" in res.output, res.output


def test_jit_plugins_treats_the_module_of_an_installed_plugin_as_that_plugin(jit_cli):
    res = jit_cli("plugins", "--json", "--plugin", "vco_plugin.plugin")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["vco"]["enabled"] is True and "vco_plugin.plugin" not in rows
    with pytest.raises(PluginError, match="'vco_plugin.plugin' is the module of the installed plugin 'vco'.*enable it once"):
        Plugins(["vco", "vco_plugin.plugin"])
