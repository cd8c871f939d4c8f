"""A plugin that implements every hook and records each call: :class:`RecordingPlugin`, :class:`HookCall`.

For tests (``jit_core.testing`` re-exports both and provides the ``jit_recorder`` fixture), and as a
stand-in for a plugin under construction: ``returns=`` makes a hook answer a fixed value, ``handlers=``
a function.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jit_core.hookspecs import hookimpl
from jit_core.plugins.hookref import hook_names


@dataclass
class HookCall:
    """One recorded hook call: the hook's name and the keyword arguments it was called with."""

    name: str
    kwargs: dict

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(sorted(self.kwargs))


class RecordingPlugin:
    """A plugin that implements every hook and records every call.

    By default each hook returns None (nothing added, the core's default applies), so registering it
    changes nothing. ``returns={"jit_capture_blocks": [1]}`` makes a hook return a value;
    ``handlers={"jit_loss_terms": fn}`` calls ``fn(**kwargs)`` and returns its result. It implements the
    install-time hooks and the run hooks on one object (a stand-in needs no per-run object; a real plugin
    makes one with ``jit_run_plugin``). ``name`` is the name it is registered under
    (``Plugins(extra=[...])`` uses ``__name__``), which is also its options namespace.
    """

    def __init__(self, name: str = "recorder", returns: Mapping[str, Any] | None = None,
                 handlers: Mapping[str, Callable[..., Any]] | None = None):
        self.__name__ = name
        self.returns = dict(returns or {})
        self.handlers = dict(handlers or {})
        unknown = sorted((set(self.returns) | set(self.handlers)) - set(hook_names()))
        if unknown:
            raise ValueError(f"RecordingPlugin: unknown hooks {unknown}; hooks: {', '.join(hook_names())}")
        self.calls: list[HookCall] = []

    def __repr__(self) -> str:
        return f"RecordingPlugin({self.__name__!r}, {len(self.calls)} calls)"

    # -- queries
    def names(self) -> list[str]:
        """Hook names in call order."""
        return [c.name for c in self.calls]

    def calls_of(self, name: str) -> list[HookCall]:
        return [c for c in self.calls if c.name == name]

    def count(self, name: str) -> int:
        return len(self.calls_of(name))

    def called(self, name: str) -> bool:
        return self.count(name) > 0

    def clear(self) -> None:
        self.calls.clear()

    # -- recording
    def _call(self, name: str, **kwargs: Any) -> Any:
        self.calls.append(HookCall(name, kwargs))
        if name in self.handlers:
            return self.handlers[name](**kwargs)
        return self.returns.get(name)

    # -- every hook of jit_core.hookspecs, with its full signature
    @hookimpl(tryfirst=True)
    def jit_official_layouts(self):
        return self._call("jit_official_layouts")

    @hookimpl(tryfirst=True)
    def jit_run_plugin(self, config):
        return self._call("jit_run_plugin", config=config)

    @hookimpl(tryfirst=True)
    def jit_setup(self, run):
        return self._call("jit_setup", run=run)

    @hookimpl(tryfirst=True)
    def jit_preflight(self, config):
        return self._call("jit_preflight", config=config)

    @hookimpl(tryfirst=True)
    def jit_options(self):
        return self._call("jit_options")

    @hookimpl(tryfirst=True)
    def jit_presets(self):
        return self._call("jit_presets")

    @hookimpl(tryfirst=True)
    def jit_studies(self):
        return self._call("jit_studies")

    @hookimpl(tryfirst=True)
    def jit_streams(self, config, model_config):
        return self._call("jit_streams", config=config, model_config=model_config)

    @hookimpl(tryfirst=True)
    def jit_null_branch(self, drop, streams, config, training, generator):
        return self._call("jit_null_branch", drop=drop, streams=streams, config=config, training=training,
                          generator=generator)

    @hookimpl(tryfirst=True)
    def jit_capture_blocks(self, config):
        return self._call("jit_capture_blocks", config=config)

    @hookimpl(tryfirst=True)
    def jit_trainable_modules(self, config, model):
        return self._call("jit_trainable_modules", config=config, model=model)

    @hookimpl(tryfirst=True)
    def jit_loss_terms(self, step, generator):
        return self._call("jit_loss_terms", step=step, generator=generator)

    @hookimpl(tryfirst=True)
    def jit_batch_sampler(self, dataset, config, rank, world_size, seed):
        return self._call("jit_batch_sampler", dataset=dataset, config=config, rank=rank, world_size=world_size,
                          seed=seed)

    @hookimpl(tryfirst=True)
    def jit_add_commands(self, cli):
        return self._call("jit_add_commands", cli=cli)

    @hookimpl(tryfirst=True)
    def jit_log_sinks(self, config, run_dir):
        return self._call("jit_log_sinks", config=config, run_dir=run_dir)

    @hookimpl(tryfirst=True)
    def jit_eval_metrics(self, images, labels, config):
        return self._call("jit_eval_metrics", images=images, labels=labels, config=config)

    @hookimpl(tryfirst=True)
    def jit_guidance_terms(self, streams, scale):
        return self._call("jit_guidance_terms", streams=streams, scale=scale)
