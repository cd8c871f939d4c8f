"""Plugin manager: discovery through the ``jit_core.plugins`` entry-point group, on/off by name.

Plugins are **installed but off until enabled** (``jit train --plugin vco`` or ``plugins = ["vco"]``
in the config), so a baseline run never changes because a plugin is installed. A plugin can also be
given as a module path (``--plugin my_pkg.my_plugin``) or a ``.py`` file. A plugin is registered, and its
options live, under the name it is enabled by; the module path of an installed plugin names that
installed plugin. ``JIT_DISABLE_PLUGIN_AUTOLOAD=1`` ignores entry points entirely (module paths still
work), like pytest's ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.metadata as md
import importlib.util
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import pluggy

from jit_core import hookspecs, trackers
from jit_core.config import Config, ConfigError, suggest
from jit_core.errors import PluginError
from jit_core.hookcalls import RUN_SUFFIX, call_each, call_one
from jit_core.logsinks import LogSinks

ENTRY_POINT_GROUP = "jit_core.plugins"
#: Hooks of the plugin module (called when a plugin is installed or a run starts), never of a run object.
INSTALL_TIME_HOOKS = ("jit_options", "jit_presets", "jit_studies", "jit_add_commands", "jit_official_layouts",
                      "jit_run_plugin")
DISABLE_ENV = "JIT_DISABLE_PLUGIN_AUTOLOAD"


@dataclass
class PluginInfo:
    name: str
    source: str          # "entry point <dist>" or "module <path>"
    version: str
    enabled: bool
    hooks: list[str]
    options: dict[str, Any]
    module: Optional[ModuleType] = None

    error: str = ""

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "module" and (f.name != "error" or self.error)}


def installed_plugins() -> dict[str, md.EntryPoint]:
    """Entry points of the ``jit_core.plugins`` group (empty when autoload is disabled)."""
    if os.environ.get(DISABLE_ENV):
        return {}
    return {ep.name: ep for ep in md.entry_points(group=ENTRY_POINT_GROUP)}


def installed_module_names() -> dict[str, str]:
    """``{module path: entry-point name}`` of the installed plugins (``vco_plugin.plugin`` -> ``vco``)."""
    return {ep.value.split(":")[0].strip(): name for name, ep in installed_plugins().items()}


def check_run_plugins(names: Iterable[str], trusted, source) -> None:
    """Refuse plugins that only a file names: a run folder's ``config.json`` is untrusted input.

    Installed entry-point plugins are the user's own and always load. A module path or ``.py`` file
    named by ``source`` (a run folder) is imported only if ``trusted`` is True or names it (the user
    passed ``--trust-plugin NAME`` or ``--trust-plugins``); otherwise this raises PluginError, before any import.
    """
    if trusted is True:
        return
    trusted = set(trusted or ())
    installed = installed_plugins()
    for name in names:
        if name not in installed and name not in trusted:
            raise PluginError(f"{source} names the plugin {name!r}, which is not an installed plugin: jit does not "
                              f"import code named only by a run folder; if you trust it, pass --trust-plugin {name} "
                              f"(jit train --resume: --plugin {name}) or --trust-plugins")


def _import_plugin_module(name: str) -> ModuleType:
    """Import a plugin given as a module path (``my_pkg.my_plugin``) or a ``.py`` file path."""
    try:
        if name.endswith(".py"):
            path = os.path.abspath(name)
            if not os.path.isfile(path):
                raise ImportError(f"no such file {path}")
            spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
            if spec is None or spec.loader is None:
                raise ImportError(f"{path} cannot be loaded as a Python module")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(name)
    except ImportError as exc:
        raise PluginError(f"plugin module {name!r} could not be imported: {exc}") from exc


def _hook_names(module) -> list[str]:
    return sorted(n for n in dir(module) if n.startswith("jit_") and callable(getattr(module, n, None)))


class Plugins:
    """A pluggy manager with the built-in trackers and the enabled plugins registered (and, once a run
    has started, their per-run objects)."""

    def __init__(self, enabled: Iterable[str] = (), extra: Iterable[Any] = ()):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        for name, module in trackers.BUILTIN.items():   # TensorBoard, W&B: off until log.* switches them on
            self.pm.register(module, name=name)
        self.infos: dict[str, PluginInfo] = {}
        self._installed = installed_plugins()
        self.runs: dict[str, Any] = {}          # plugin name -> its per-run object (jit_run_plugin)
        self.run_config: Config | None = None   # the config the per-run objects were made for
        for name in enabled:
            self.enable(name)
        for obj in extra:  # objects registered directly (tests, notebooks)
            name = getattr(obj, "__name__", None) or type(obj).__name__
            self._register(name, obj, "object", "")
        self.pm.check_pending()
        self.hook = self.pm.hook

    def enable(self, name: str) -> None:
        if name in self.infos:
            return
        if name not in self._installed and name in installed_module_names():
            alias = installed_module_names()[name]
            if alias in self.infos:
                raise PluginError(f"plugin {name!r} is the module of the installed plugin {alias!r}, which is already "
                                  f"enabled: enable it once (--plugin {alias})")
        if name in self._installed:
            ep = self._installed[name]
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001
                raise PluginError(f"plugin {name!r} (entry point {ep.value}) failed to import: {exc}") from exc
            dist = ep.dist
            self._register(name, module, f"entry point {dist.name if dist else ep.value}",
                           dist.version if dist else "")
        elif name.endswith(".py") or "." in name or importlib.util.find_spec(name) is not None:
            module = _import_plugin_module(name)
            self._register(name, module, f"module {getattr(module, '__file__', name)}",
                           getattr(module, "__version__", ""))
        else:
            hint = suggest(name, self._installed)
            extra = "" if not os.environ.get(DISABLE_ENV) else f" ({DISABLE_ENV} is set: entry points are ignored)"
            raise PluginError(f"unknown plugin {name!r}{hint}{extra}; installed: "
                              f"{', '.join(sorted(self._installed)) or 'none'}; a module path (my_pkg.my_plugin) also works")

    def _register(self, name, module, source, version) -> None:
        if self.pm.is_registered(module):
            raise PluginError(f"plugin {name!r} is the same module as the enabled plugin "
                              f"{self.pm.get_name(module)!r}: enable it once")
        self.pm.register(module, name=name)
        implemented = {c.name for c in (self.pm.get_hookcallers(module) or [])}
        stray = [n for n in _hook_names(module) if n not in implemented]
        if stray:
            self.pm.unregister(module)
            raise PluginError(f"plugin {name!r} defines {', '.join(stray)} without @jit_core.hookimpl or with an "
                              f"unknown hook name{suggest(stray[0], self.hook_names())}; known hooks: "
                              f"{', '.join(self.hook_names())}")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(module)
            raise PluginError(f"plugin {name!r} implements an unknown hook: {exc}. "
                              f"Known hooks: {', '.join(sorted(self.hook_names()))}") from exc
        options = {}
        schema = self._options_schema(name)
        if schema is not None:
            options = {f.name: getattr(schema(), f.name) for f in dataclasses.fields(schema)}
        hooks = sorted(c.name for c in (self.pm.get_hookcallers(module) or []))
        self.infos[name] = PluginInfo(name, source, version, True, hooks, options, module)

    def hook_names(self) -> list[str]:
        return [n for n in dir(hookspecs) if n.startswith("jit_")]

    # ----------------------------------------------------------------- one run
    def start_run(self, config) -> dict[str, Any]:
        """Make every plugin's per-run object (``jit_run_plugin(config)``) and register it for this run.

        ``config`` is the resolved, checked config. Objects of an earlier run are unregistered first.
        Only the plugins ``config.plugins`` enables (and objects passed directly) are asked. The plugins are
        registered again in ``--plugin`` order, each run object right after its module,
        so answers keep the ``--plugin`` order. Returns ``{plugin: run object}``.
        """
        for name in list(self.runs):
            self.pm.unregister(name=name + RUN_SUFFIX)
        self.runs, self.run_config = {}, config
        wanted = set(config.plugins)     # a plugin loaded here but not enabled by this config makes no run object
        made = dict(call_each(self.pm.hook.jit_run_plugin, config=config,
                              only=lambda name: name in wanted or getattr(self.infos.get(name), "source", "") == "object"))
        for name, info in self.infos.items():     # registration order = --plugin order
            self.pm.unregister(name=name)
            self.pm.register(info.module, name=name)
            if name in made:
                self._register_run_object(name, made[name])
        return dict(self.runs)

    def resolved_config(self) -> Config:
        """The resolved config this run's plugin objects were made for (:meth:`start_run`'s)."""
        if self.run_config is None:
            raise PluginError("no run started yet: build the network (build_model_for) before asking for its config")
        return self.run_config

    def ensure_run(self, config) -> None:
        """Start the run for ``config`` unless its objects are already made (for this very config object)."""
        if self.run_config is not config:
            self.start_run(config)

    def _register_run_object(self, name: str, obj: Any) -> None:
        install_time = [h for h in INSTALL_TIME_HOOKS if callable(getattr(obj, h, None))]
        if install_time:
            raise PluginError(f"plugin {name!r}: its run object implements {', '.join(install_time)}, which are "
                              "install-time hooks: define them at module level")
        self.pm.register(obj, name=name + RUN_SUFFIX)
        implemented = {c.name for c in (self.pm.get_hookcallers(obj) or [])}
        stray = [n for n in _hook_names(obj) if n not in implemented]
        if stray:
            self.pm.unregister(obj)
            raise PluginError(f"plugin {name!r}: its run object defines {', '.join(stray)} without @jit_core.hookimpl "
                              f"or with an unknown hook name{suggest(stray[0], self.hook_names())}")
        self.pm.check_pending()
        self.runs[name] = obj

    def has_eval_metrics(self) -> bool:
        return bool(self.pm.hook.jit_eval_metrics.get_hookimpls())

    def eval_metrics(self, config, images, labels, taken=()) -> dict[str, float]:
        """Every plugin's ``jit_eval_metrics`` of one set of samples, merged; a name in ``taken`` (the core's
        metrics) or given by two plugins is an error naming both."""
        out, owner = {}, {name: "jit_core" for name in taken}
        for plugin, values in call_each(self.pm.hook.jit_eval_metrics, images=images, labels=labels, config=config):
            for name, value in values.items():
                if name in owner:
                    raise PluginError(f"metric {name!r} of plugin {plugin!r} is also given by {owner[name]!r}; "
                                      "rename it (e.g. <plugin>/<metric>)")
                out[name], owner[name] = float(value), plugin
        return out

    def preflight(self, config) -> list[str]:
        """Every plugin's ``jit_preflight`` problems, as ``"plugin: problem"`` lines (empty: none found)."""
        self.ensure_run(config)
        return [f"{plugin}: {line}" for plugin, lines in call_each(self.pm.hook.jit_preflight, config=config)
                for line in lines]

    def setup(self, run: hookspecs.RunContext) -> None:
        """Every plugin's ``jit_setup(run)``, with the global RNGs forked and seeded by ``train.seed``."""
        from jit_core.rng import isolated_rng
        self.ensure_run(run.config)
        with isolated_rng(run.config.train.seed, run.device):
            call_each(self.pm.hook.jit_setup, run=run)

    def _options_schema(self, name: str) -> Optional[type]:
        answers = call_each(self.pm.hook.jit_options, only=lambda plugin: plugin == name)
        return answers[0][1] if answers else None

    def option_schemas(self) -> dict[str, type]:
        """``{plugin: options dataclass}`` of the enabled plugins that declare options."""
        return dict(call_each(self.pm.hook.jit_options, only=lambda plugin: plugin in self.infos))

    def install_answers(self, hook_name: str, **kwargs) -> list[tuple[str, Any]]:
        """``(plugin, answer)`` of an install-time hook (``jit_presets``, ``jit_studies``, ``jit_add_commands``)."""
        return call_each(getattr(self.pm.hook, hook_name), **kwargs)

    def streams(self, config, model_config):
        """The pixel stream, then every plugin's streams in ``--plugin`` order, each with ``Stream.plugin`` set to
        its plugin; a duplicate name is an error naming both plugins."""
        from jit_core.diffusion import noise_scale_for
        from jit_core.model.streams import pixel_stream
        self.ensure_run(config)
        streams = [pixel_stream(model_config.in_channels,
                                noise_scale_for(model_config.image_size, config.diffusion.noise_scale))]
        owner = {streams[0].name: "jit_core"}
        for plugin, added in call_each(self.pm.hook.jit_streams, config=config, model_config=model_config):
            for s in added:
                if s.name in owner:
                    raise PluginError(f"stream {s.name!r} is added by both {owner[s.name]!r} and {plugin!r}; "
                                      "rename one of them")
                owner[s.name] = plugin
                owned = copy.copy(s)          # a plugin's Stream subclass keeps its methods
                owned.plugin = plugin
                streams.append(owned)
        return streams

    def trainable_modules(self, config, model) -> dict[str, Any]:
        """Every plugin's ``jit_trainable_modules``, merged; a name given by two plugins is an error naming both.

        Built under a forked RNG seeded by ``train.seed`` (like ``jit_setup``): their random init neither depends
        on nor shifts the training randomness, so a plugin whose terms are off trains the baseline bit for bit."""
        from jit_core.rng import isolated_rng
        out: dict[str, Any] = {}
        owner: dict[str, str] = {}
        with isolated_rng(config.train.seed, next(model.parameters()).device):
            answers = call_each(self.pm.hook.jit_trainable_modules, config=config, model=model)
        for plugin, modules in answers:
            for key, module in modules.items():
                if key in owner:
                    raise PluginError(f"trainable module {key!r} is added by both {owner[key]!r} and {plugin!r}; "
                                      "rename one of them")
                out[key], owner[key] = module, plugin
        return out

    def capture_blocks(self, config) -> list[int]:
        """The union of every plugin's ``jit_capture_blocks``, sorted."""
        return sorted({i for _, blocks in call_each(self.pm.hook.jit_capture_blocks, config=config) for i in blocks})

    def log_sinks(self, config, run_dir, logged_until: int = -1) -> LogSinks:
        """Every plugin's ``jit_log_sinks`` (the built-in trackers included) as one fan-out; call on rank 0 only.
        ``logged_until``: the last step the sinks already have (a resumed run does not resend it)."""
        sinks = []
        try:
            for plugin, answer in call_each(self.pm.hook.jit_log_sinks, config=config, run_dir=Path(run_dir)):
                sinks += [(plugin, sink) for sink in (answer if isinstance(answer, (list, tuple)) else [answer])]
        except BaseException:
            LogSinks(sinks).close()
            raise
        return LogSinks(sinks, logged_until)

    def send_result(self, config, run_dir, record: dict) -> None:
        """An evaluation record to every sink (rank 0); a tracker that cannot start is a warning, not a failed evaluation."""
        try:
            sinks = self.log_sinks(config, run_dir)
        except (PluginError, ConfigError) as e:
            logging.getLogger("jit").warning("evaluation result not sent to the trackers: %s", e)
            return
        with sinks:
            sinks.log_result(record)

    def batch_sampler(self, dataset, config, rank: int, world_size: int, seed: int):
        """The one plugin's ``jit_batch_sampler`` (None: the core's); two plugins answering fail naming both."""
        return call_one(self.pm.hook.jit_batch_sampler, dataset=dataset, config=config, rank=rank,
                        world_size=world_size, seed=seed)


def describe_all(enabled: Iterable[str] = ()) -> list[PluginInfo]:
    """Every installed plugin (and the module plugins in ``enabled``), enabled or not, for ``jit plugins``.

    An installed plugin that fails to load is listed with its error instead of breaking the listing; a
    name in ``enabled`` that does not load raises :class:`PluginError`. The module path of an installed
    plugin (``vco_plugin.plugin``) marks that plugin (``vco``) enabled.
    """
    modules = installed_module_names()
    enabled = [modules.get(e, e) for e in enabled]
    installed = installed_plugins()
    pl = Plugins()
    broken = []
    for name in installed:
        try:
            pl.enable(name)
        except PluginError as exc:
            if name in enabled:
                raise
            broken.append(PluginInfo(name, f"entry point {installed[name].value}", "", False, [], {}, error=str(exc)))
    for name in enabled:
        if name not in installed:
            pl.enable(name)
    for name, info in pl.infos.items():
        info.enabled = name in enabled
    return list(pl.infos.values()) + broken
