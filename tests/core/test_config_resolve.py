"""The run config's one resolve step (issue #23 item 2): composed -> resolved once -> frozen; checks only read.

A neutral plugin (``tests.core.lowpass_plugin``) stands for any plugin with options.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import json
import pickle
from pathlib import Path

import pytest

from jit_core.config import (
    Config,
    ConfigError,
    FrozenConfigError,
    evolve,
    flatten,
    get_preset,
    load_config,
    plugin_options,
    resolve,
    set_key,
)
from jit_core.plugins import resolve_run
from jit_core.testing import tiny_config
from tests.core.lowpass_plugin import LowpassOptions

LOWPASS = "tests.core.lowpass_plugin"
PACKAGE = Path(__file__).resolve().parents[2] / "jit_core" / "config"


def test_resolve_returns_a_new_frozen_config_and_leaves_its_input_alone():
    cfg = tiny_config([LOWPASS], **{f"{LOWPASS}.drop": "0.5"})
    before = cfg.to_dict()
    resolved, _ = resolve_run(cfg)
    assert cfg.to_dict() == before and not cfg.resolved            # the check read it; nothing was filled in
    assert resolved.resolved and resolved is not cfg
    opts = plugin_options(resolved, LowpassOptions)
    assert opts == LowpassOptions(drop=0.5)                          # typed ("0.5" -> 0.5), the default filled in
    assert resolved.model_overrides == {"in_channels": 1, "num_classes": 10}   # the data's (digits)
    assert resolved.model_config.in_channels == 1 and resolved.model_config.num_classes == 10


@pytest.mark.parametrize("change", [
    lambda c: setattr(c.train, "max_steps", 3),
    lambda c: setattr(c, "model", "JiT-S/4"),
    lambda c: c.plugins.append("x"),
    lambda c: c.model_overrides.update(depth=2),
    lambda c: c.plugin_options.pop(LOWPASS),
    lambda c: set_key(c, "optim.lr", "1e-3"),
])
def test_a_resolved_config_refuses_every_change_in_one_line_naming_the_way_out(change):
    resolved, _ = resolve_run(tiny_config([LOWPASS]))
    with pytest.raises(FrozenConfigError, match="read-only") as err:
        change(resolved)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ConfigError)                        # the CLI prints it as one line


def test_variants_are_derived_with_evolve():
    resolved, _ = resolve_run(tiny_config([LOWPASS]))
    longer = evolve(resolved, {"train.max_steps": "9", f"{LOWPASS}.jitter": 0.5}, run_dir="/tmp/x")
    assert longer.resolved and longer.train.max_steps == 9 and longer.run_dir == "/tmp/x"
    assert plugin_options(longer, LowpassOptions).jitter == 0.5
    assert resolved.train.max_steps == 3 and plugin_options(resolved, LowpassOptions).jitter == 0.01
    with pytest.raises(ConfigError, match="must be >= 0"):           # checked again
        evolve(resolved, {"train.max_steps": -1})
    with pytest.raises(ConfigError, match="network and plugins cannot change"):  # a new network needs a new resolve
        evolve(resolved, {"data.image_size": 64})
    plain = evolve(get_preset("test"), {"train.max_steps": 2})      # an unresolved config stays unresolved
    assert not plain.resolved and plain.train.max_steps == 2


def test_copies_and_pickles_stay_frozen_and_equal():
    resolved, _ = resolve_run(tiny_config([LOWPASS]))
    for twin in (copy.deepcopy(resolved), pickle.loads(pickle.dumps(resolved))):
        assert twin == resolved and twin.resolved
        with pytest.raises(FrozenConfigError):
            twin.train.seed = 1


def test_resolving_twice_gives_the_same_config():
    once, _ = resolve_run(tiny_config([LOWPASS]))
    twice, _ = resolve_run(once)
    assert twice.to_dict() == once.to_dict()


def test_option_errors_name_the_key_and_do_not_touch_the_config():
    cfg = tiny_config([LOWPASS], **{f"{LOWPASS}.drop": "2"})
    before = cfg.to_dict()
    with pytest.raises(ConfigError, match=rf"{LOWPASS}.drop=2.0: must be >= 0 and <= 1"):
        resolve_run(cfg)
    assert cfg.to_dict() == before
    stray = tiny_config([], **{f"{LOWPASS}.drop": "0.5"})
    with pytest.raises(ConfigError, match="is not an enabled plugin"):
        resolve_run(stray)


def test_plugin_options_of_an_unresolved_config_say_to_resolve_it():
    with pytest.raises(ConfigError, match="resolve the config first"):
        plugin_options(tiny_config([LOWPASS]), LowpassOptions)


def test_a_resolved_config_round_trips_through_its_json():
    resolved, _ = resolve_run(tiny_config([LOWPASS], **{f"{LOWPASS}.drop": "0.5"}))
    saved = json.loads(resolved.to_json())
    assert saved["plugin_options"] == {LOWPASS: dataclasses.asdict(LowpassOptions(drop=0.5))}
    again, _ = resolve_run(Config.from_dict(saved))
    assert again == resolved


def test_an_earlier_versions_config_json_loads_as_before():
    """A config.json written before the resolve step (options as a plain table, no unknown keys) reads the same."""
    old = get_preset("test").to_dict()
    old["model_overrides"] = {"num_classes": 10, "in_channels": 1}
    old["plugin_options"] = {LOWPASS: {"drop": 0.25, "jitter": 0.01}}      # an option added since: its default
    old["plugins"] = [LOWPASS]
    resolved, _ = resolve_run(Config.from_dict(json.loads(json.dumps(old))))
    assert plugin_options(resolved, LowpassOptions) == LowpassOptions(drop=0.25)
    now = resolved.to_dict()
    assert now["plugin_options"] == {LOWPASS: dataclasses.asdict(LowpassOptions(drop=0.25))}
    assert {k: v for k, v in now.items() if k != "plugin_options"} == \
        {k: v for k, v in old.items() if k != "plugin_options"}


def test_one_flattener_gives_keys_that_set_key_reads_back():
    resolved, _ = resolve_run(tiny_config([LOWPASS]))
    flat = flatten(resolved)
    assert flat["optim.lr"] == resolved.optim.lr and flat[f"{LOWPASS}.drop"] == 0.3
    assert flat["model_overrides"] == {"in_channels": 1, "num_classes": 10}       # one value, set whole
    assert "run_dir" not in flatten(resolved, without=("run_dir",))
    assert f"plugin_options.{LOWPASS}.drop" in flatten(resolved, plugin_prefix="plugin_options.")
    rebuilt = Config()
    for key, value in flat.items():
        set_key(rebuilt, key, value)
    assert resolve_run(rebuilt)[0].to_dict() == resolved.to_dict()


def test_composing_still_works_on_plain_configs(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('model = "JiT-T/4"\n[train]\nmax_steps = 7\n')
    cfg = load_config("test", toml, ["optim.lr=1e-3"])
    cfg.train.seed = 3                                               # unresolved: composing mutates freely
    assert (cfg.train.max_steps, cfg.optim.lr, cfg.train.seed) == (7, 1e-3, 3)
    assert not resolve(cfg, {}).__dict__.get("_model_config")        # the pure step attaches no model by itself


def test_config_modules_are_small_and_have_one_job():
    for path in sorted(PACKAGE.glob("*.py")):
        lines = path.read_text().count("\n")
        assert lines < 300, f"{path.name}: {lines} lines (split it)"
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path.name} says what it is for"
