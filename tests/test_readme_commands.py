"""Every command of README.md runs as written, at a tiny budget, offline; every `jit` command of the docs parses.

The README's code blocks are parsed; each command line runs through the real `jit` CLI (in-process) in a
scratch folder, with the tiny budget appended as overrides (`train.max_steps=2 ...`) or options
(`--num-images 8 --steps 1`). A command is skipped only when it needs what a CI machine does not have
(ImageNet, GPUs, a SLURM cluster of GPUs, the Hugging Face Hub), each skip saying why and where else it is
tested. A README command this file has no rule for fails the test: a new command gets a rule with it.
"""
from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
TRAIN_BUDGET = ["train.max_steps=2", "train.log_every=1", "train.ckpt_every=2", "optim.batch_size=16",
                "sample.steps=1", "sample.batch_size=40"]
STUDY_BUDGET = ["--seeds", "0", "--arms", "JiT,V-Co", "--num-images", "8", "--lanes", "2", *TRAIN_BUDGET,
                "sample.num_images=8"]

NEEDS_IMAGENET = "needs ImageNet (data.path) and GPUs"
NEEDS_HUB = "needs the Hugging Face Hub (the same path through a local Hub cache: tests/test_hub_convert.py, " \
            "tests/test_export_push.py)"

# (regex on the README line, action): "run" as written + budget; ("skip", why); ("fails", text of its one-line error)
RULES: list[tuple[str, object]] = [
    (r"^bash scripts/demo\.sh", ("skip", "the full demo (~17 min): its study runs at a tiny budget below")),
    (r"^bash scripts/test\.sh", ("skip", "the test suite itself")),
    (r"^source ", ("skip", "a shell built-in")),
    (r"^jit study --list", "run"),
    (r"^jit study vco-tiny --dry-run", "run"),
    (r"^jit study vco-tiny$", "study"),
    (r"^jit study vco-tiny --quick$", ("skip", "the line above at the study's quick budget, which tests/test_study.py "
                                               "checks (the runs here are cut to 2 steps anyway)")),
    (r"^jit slurm study vco-b16", ("skip", NEEDS_IMAGENET + " on a SLURM cluster (tests/slurm run the local one)")),
    (r"^jit study vco-b16 .*--report-only", ("skip", "needs the finished ImageNet runs of the line above")),
    (r"^jit --version|^jit models|^jit presets", "run"),
    (r"^jit train --preset (tiny|vco-tiny|jit-tiny-wide) ", "train"),
    (r"^jit train --resume ", "train"),
    (r"^jit train --preset (jit|vco)-[bh]16 ", ("skip", NEEDS_IMAGENET)),
    (r"^torchrun ", ("skip", NEEDS_IMAGENET + " (8 processes)")),
    (r"^jit sample ", "sample"),
    (r"^jit convert checkpoint-last\.pth ", "convert"),
    (r"^jit convert hf://", ("skip", NEEDS_HUB)),
    (r"^jit export ", "run"),
    (r"^jit push ", ("skip", NEEDS_HUB)),
    (r"^jit evaluate runs/jit-b16 ", ("skip", NEEDS_IMAGENET + " and the Inception weights")),
    (r"^jit evaluate runs/tiny ", "evaluate"),
    (r"^jit compare ", "compare"),
]
EXPECTED_ERRORS = {   # README lines that show a check failing: their one-line error
    "jit train --preset tiny --run-dir runs/x --dry-run optim.batch_size=0": "optim.batch_size=0",
}


def readme_blocks(lang: str) -> list[str]:
    return [body for fence, body in re.findall(r"```(\w*)\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
            if fence == lang]


def readme_commands() -> list[str]:
    """The bash blocks' commands: comments dropped, continuation lines joined."""
    commands = []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()       # a comment starts with whitespace + '#'
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def rule_for(command: str):
    for pattern, action in RULES:
        if re.search(pattern, command):
            return action
    raise AssertionError(f"README command without a rule in {__file__}: {command}")


def test_every_readme_command_has_a_rule():
    commands = readme_commands()
    assert len(commands) > 20 and any(c.startswith("jit train --preset vco-tiny") for c in commands)
    for command in commands:
        rule_for(command)


def _with_budget(args: list[str], action: str) -> list[str]:
    if action == "train":
        args = [a for a in args if not a.startswith("train.max_steps=")]
        return [*args, *TRAIN_BUDGET] + (["train.max_steps=3"] if "--resume" in args else [])
    if action == "study":
        return [*args, *STUDY_BUDGET]
    if action == "sample":
        return [*args, "--steps", "1", "--num-per-class", "1"]
    if action == "evaluate":
        return [*args, "--num-images", "8", "--steps", "1"]
    if action == "compare":
        return [*args, "--sheet-images", "2"]
    if action == "convert":
        return args
    return args


@pytest.mark.slow     # ~3-5 min on the loaded 2-core machine: 10 tiny trainings, a 2-arm study, evaluations
def test_readme_commands_run_as_written_at_a_tiny_budget(tmp_path, monkeypatch, official_checkpoint):
    import jit_core.cli as jit_cli
    import jit_core.eval.classifier as classifier
    jit_cli.add_all_commands()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JIT_CACHE_DIR", str(tmp_path / "cache"))          # a private metric classifier ...
    monkeypatch.setitem(classifier.DEFAULT_EPOCHS, "fashion_mnist", 1)     # ... trained for 1 epoch
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "checkpoint-last.pth").symlink_to(official_checkpoint("jit_tiny"))
    runner, skipped, ran = CliRunner(), [], []
    for command in readme_commands():
        action = rule_for(command)
        if isinstance(action, tuple):
            skipped.append(f"{command[:60]}: {action[1]}")
            continue
        words = shlex.split(command)
        assert words[0] == "jit", command
        for preset, arm in (("tiny", "jit"), ("vco-tiny", "vco")):    # the training seeds an `--arm` example names
            for seed in sorted({int(k) for k in re.findall(rf"runs/{arm}/s(\d)", command)}):
                if not (tmp_path / "runs" / arm / f"s{seed}").exists():
                    made = runner.invoke(jit_cli.cli, ["train", "--preset", preset, "--run-dir", f"runs/{arm}/s{seed}",
                                                       f"train.seed={seed}", *TRAIN_BUDGET])
                    assert made.exit_code == 0, made.output
        args = words[1:] if command in EXPECTED_ERRORS else _with_budget(words[1:], action)
        started = time.perf_counter()
        result = runner.invoke(jit_cli.cli, args)
        seconds = time.perf_counter() - started
        if command in EXPECTED_ERRORS:
            lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
            assert result.exit_code == 1 and len(lines) == 1 and EXPECTED_ERRORS[command] in lines[0], result.output
            assert not (tmp_path / "runs" / "x").exists()      # nothing written
        else:
            assert result.exit_code == 0, f"{' '.join(args)}\n{result.output}\n{result.exception!r}"
        ran.append(f"{seconds:5.1f} s  {command[:90]}")
        print(ran[-1], flush=True)
    assert (tmp_path / "runs" / "tiny-tb" / "tb").is_dir() and (tmp_path / "runs" / "tiny-wandb" / "wandb-run.json").is_file()
    assert (tmp_path / "exported" / "checkpoint-last.pth").is_file()
    assert (tmp_path / "reports" / "seeds" / "index.html").is_file()
    print(f"ran {len(ran)} README commands:\n  " + "\n  ".join(ran))
    print(f"skipped {len(skipped)}:\n  " + "\n  ".join(skipped))

    # the Python API block, with z, t, y made up; its hf:// line needs the Hub (tests/test_export_push.py)
    namespace = {"torch": torch}
    for line in readme_blocks("python")[0].splitlines():
        if "hf://" in line:
            continue
        if line.startswith("x_hat"):
            cfg = namespace["run"].model.cfg
            namespace.update(z=torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size), t=torch.rand(2),
                             y=torch.tensor([0, 1]))
        exec(line, namespace)   # noqa: S102 -- the README's own example
    assert namespace["images"].dtype == torch.uint8 and namespace["images"].shape[0] == 10


def _doc_commands() -> list[tuple[str, str]]:
    """(file, command) for every `jit ...` line in a code block of README.md, docs/*.md and the example's README
    (a leading `$ ` prompt dropped, comments dropped, continuation lines joined)."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples/repa_plugin/README.md"]
    found = []
    for path in files:
        for _, body in re.findall(r"```(\w*)\n(.*?)```", path.read_text(), re.S):
            for line in body.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#.*$", "", line.strip()).removeprefix("$ ").strip()
                if line.startswith("jit "):
                    found.append((path.relative_to(ROOT).as_posix(), " ".join(line.split())))
    return found


def test_every_documented_jit_command_parses():
    """Every documented `jit` command names a real command and real options with the right arguments (parsed by
    click without running: a renamed option or command in the docs fails here). Paths need not exist."""
    import click

    import jit_core.cli as jit_cli
    jit_cli.add_all_commands()
    commands = _doc_commands()
    assert len(commands) > 30
    for where, command in commands:
        words = shlex.split(re.sub(r"\[(-[^\]]*)\]", r"\1", command))[1:]    # synopsis `[--opt X]`: parse it too
        group, ctx_args = jit_cli.cli, []
        try:
            while isinstance(group, click.Group) and words and not words[0].startswith("-"):
                sub = group.get_command(click.Context(group), words[0])
                if sub is None:
                    raise click.UsageError(f"no command {words[0]!r}")
                ctx_args.append(words.pop(0))
                group = sub
            _parse_only(group, words)
        except click.ClickException as exc:
            raise AssertionError(f"{where}: `{command}` does not parse: {exc.format_message()}") from None


def _parse_only(command, words: list[str]) -> None:
    """Options and positional arguments as click's parser reads them (unknown options, missing option values,
    missing or extra arguments fail), without converting values (a documented path need not exist)."""
    import click
    ctx = click.Context(command, info_name="jit")
    values, extra, _ = command.make_parser(ctx).parse_args(args=list(words))
    if isinstance(command, click.Group):
        return
    if extra:
        raise click.UsageError(f"unexpected extra argument(s) {extra}")
    for param in command.params:
        value = values.get(param.name)    # click marks a missing one with a sentinel (None or UNSET by version)
        if isinstance(param, click.Argument) and param.required and (value in (None, ()) or
                                                                     type(value).__name__ == "Sentinel"):
            raise click.UsageError(f"missing argument {param.human_readable_name}")
