"""Packaging and the lazy CLI: `jit --help` imports no torch and no command module, yet lists every command
(plugins' included); `jit --version` is the one version; the wheel ships the package data; the testing
fixtures are not a pytest11 entry point."""
from __future__ import annotations

import importlib
import importlib.metadata as md
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import jit_core
import jit_core.cli as jit_cli

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO).stdout


def test_help_imports_no_torch_and_lists_every_command():
    out = _python("import sys\nfrom jit_core.cli import cli\n"
                  "try:\n    cli(['--help'], prog_name='jit')\nexcept SystemExit:\n    pass\n"
                  "heavy = [m for m in ('torch', 'jit_core.eval.report', 'jit_core.study.command', 'slurm.cli',"
                  " 'vco_plugin.plugin') if m in sys.modules]\nprint('IMPORTED', heavy)")
    assert "IMPORTED []" in out, out
    for name in ("train", "sample", "evaluate", "compare", "study", "convert", "export", "push", "slurm", "vco"):
        assert f"\n  {name} " in out, f"{name} missing from jit --help:\n{out}"


def test_lazy_help_lines_are_the_commands_own():
    """The help `jit --help` shows without importing a command is the first line of that command's docstring."""
    for name, (module, factory, text) in jit_cli.LAZY_COMMANDS.items():
        command = getattr(importlib.import_module(module), factory)()
        assert (command.help or "").strip().split("\n")[0] == text, name


def test_lazy_commands_and_plugin_commands_resolve():
    runner = CliRunner()
    assert runner.invoke(jit_cli.cli, ["study", "--help"]).exit_code == 0
    result = runner.invoke(jit_cli.cli, ["vco", "--help"])     # a plugin's group: found by importing the plugins
    assert result.exit_code == 0 and "calibrate" in result.output, result.output
    assert runner.invoke(jit_cli.cli, ["no-such-command"]).exit_code == 2


def test_version_is_one_source():
    result = CliRunner().invoke(jit_cli.cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"jit (jit-vco) {jit_core.__version__}"
    assert md.version("jit-vco") == jit_core.__version__


def test_testing_fixtures_are_not_a_pytest11_entry_point():
    assert not [ep for ep in md.entry_points(group="pytest11") if ep.value.startswith("jit_core")]


def test_wheel_ships_package_data(tmp_path):
    # built from a copy of the source files: a build in the checkout would leave build/ and *.egg-info there
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tmp_path / "src" / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(tmp_path / "src")], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("jit_vco-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for wanted in ("slurm/profiles/example.toml", "jit_core/py.typed", "vco_plugin/py.typed", "slurm/py.typed"):
        assert wanted in names, wanted
    assert any(n.endswith("LICENSE") and ".dist-info/" in n for n in names), names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert f"Version: {jit_core.__version__}" in meta and "tomli" in meta


def test_config_and_profiles_read_toml_without_tomllib(tmp_path):
    """Python 3.10 has no tomllib: config files and cluster profiles then go through tomli (same parser)."""
    pytest.importorskip("tomli")
    (tmp_path / "run.toml").write_text('[optim]\nblr = 1e-4\n[train]\nmax_steps = 7\n')
    (tmp_path / "mine.toml").write_text('partition = "gpu"\ngpus_per_node = 4\n')
    out = _python("import sys\nsys.modules['tomllib'] = None   # as on Python 3.10\n"
                  "from jit_core.config import load_config\nfrom slurm.profiles import load_profile\n"
                  f"cfg = load_config('test', {str(tmp_path / 'run.toml')!r})\n"
                  f"prof = load_profile({str(tmp_path / 'mine.toml')!r})\n"
                  "import tomli\nprint(cfg.optim.blr, cfg.train.max_steps, prof['gpus_per_node'], "
                  "'tomli' in sys.modules)")
    assert out.split() == ["0.0001", "7", "4", "True"], out
