"""One spelling per option: `--plugin` enables (jit train), `--trust-plugin` trusts (commands that load a run;
the old `--plugin` there still works, with a warning); one name for a count of generated images."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

import jit_core.cli as jit_cli
from jit_core.clioptions import trust_options


@click.command()
@trust_options
def _loads_a_run(trust_plugins):
    click.echo(f"trusted={trust_plugins!r}")


def test_trust_plugin_and_its_deprecated_spelling():
    runner = CliRunner()
    new = runner.invoke(_loads_a_run, ["--trust-plugin", "a.b", "--trust-plugin", "c.py"])
    assert new.exit_code == 0 and "trusted=('a.b', 'c.py')" in new.output and "deprecated" not in new.output
    old = runner.invoke(_loads_a_run, ["--plugin", "a.b"])
    assert old.exit_code == 0 and "trusted=('a.b',)" in old.stdout
    assert "warning: --plugin is deprecated here, use --trust-plugin" in old.stderr
    assert "trusted=True" in runner.invoke(_loads_a_run, ["--trust-plugins"]).output


@pytest.mark.parametrize("command", ["sample", "evaluate", "compare", "push"])
def test_commands_that_load_runs_offer_trust_plugin_not_plugin(command):
    out = CliRunner().invoke(jit_cli.cli, [command, "--help"]).output
    assert "--trust-plugin " in out and "--trust-plugins" in out
    assert "--plugin " not in out      # the deprecated spelling is hidden


def test_train_enables_with_plugin_and_counts_are_num_images():
    runner = CliRunner()
    assert "--plugin" in runner.invoke(jit_cli.cli, ["train", "--help"]).output
    for command in (["evaluate"], ["compare"], ["study"]):
        assert "--num-images" in runner.invoke(jit_cli.cli, [*command, "--help"]).output, command
    compare = runner.invoke(jit_cli.cli, ["compare", "--help"]).output
    assert "--sheet-images" in compare and "--num-samples" not in compare
