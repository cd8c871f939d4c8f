"""Command-line options shared by commands of several layers, each spelled one way (click only, no torch).

- :func:`trust_options`: ``--trust-plugin NAME`` / ``--trust-plugins`` for commands that load a run folder.
  ``--plugin`` *enables* a plugin in ``jit train``; where a command only loads a run, the old spelling
  ``--plugin`` is kept as a deprecated alias of ``--trust-plugin`` and says so.
- :func:`deprecated_alias`: a hidden old option name that warns and feeds the new one.
"""
from __future__ import annotations

import functools

import click


def warn_deprecated(old: str, new: str, why: str = "") -> None:
    """One line on stderr: the old spelling still works, the new one is the name to use."""
    click.echo(f"warning: {old} is deprecated here, use {new}{f' ({why})' if why else ''}", err=True)


def deprecated_alias(old: str, new: str, dest: str, multiple: bool = False, type=None, why: str = ""):
    """A hidden option ``old`` whose values are handed to the command as ``dest`` with a warning.

    The command merges it with the new option's value (see :func:`trust_options`)."""
    def callback(ctx, param, value):
        if value not in (None, (), False):
            warn_deprecated(old, new, why)
        return value
    return click.option(old, dest, multiple=multiple, type=type, hidden=True, expose_value=True, callback=callback)


def trust_options(fn):
    """``--trust-plugin NAME`` / ``--trust-plugins`` for commands that load a run folder; passes ``trust_plugins``.

    A run folder's config.json may name plugin modules or .py files; they are imported only when the user
    names them here (installed entry-point plugins always load)."""
    def wrapper(*args, trusted_plugin_names=(), old_plugin_names=(), trust_all_plugins=False, **kwargs):
        names = tuple(trusted_plugin_names) + tuple(old_plugin_names)
        return fn(*args, trust_plugins=True if trust_all_plugins else names, **kwargs)
    wrapper = functools.update_wrapper(wrapper, fn)
    wrapper = click.option("--trust-plugins", "trust_all_plugins", is_flag=True,
                           help="Import every plugin module the run's config.json names (only for runs you trust).")(wrapper)
    wrapper = deprecated_alias("--plugin", "--trust-plugin", "old_plugin_names", multiple=True,
                               why="--plugin enables a plugin in jit train; here it only trusts one")(wrapper)
    wrapper = click.option("--trust-plugin", "trusted_plugin_names", multiple=True, metavar="NAME",
                           help="A plugin module or .py file the run's config names that may be imported. "
                                "Repeatable.")(wrapper)
    return wrapper
