"""The model card (``README.md``) ``jit push`` writes beside a run's weights on the Hugging Face Hub.

Built only from what the run folder records: its resolved config, the step of the exported checkpoint,
the trainable parameter count and the evaluations in ``RUN/eval/*.json`` (numbers only: run-folder files
are untrusted input, nothing of them is pasted into the card but numbers and known names).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from jit_core import __version__
from jit_core.config import Config

_SAFE = re.compile(r"[^A-Za-z0-9_.+/=-]")


def _safe(text) -> str:
    """A name from a file, reduced to characters that cannot break the card's markdown or YAML."""
    return _SAFE.sub("", str(text))[:80]


def eval_rows(run_dir: Path) -> list[tuple[str, str, float]]:
    """(file stem, metric, value) for every finite number in ``RUN/eval/*.json``'s ``metrics``."""
    rows = []
    for path in sorted((run_dir / "eval").glob("*.json")) if (run_dir / "eval").is_dir() else ():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        metrics = record.get("metrics") if isinstance(record, dict) else None
        if not isinstance(metrics, dict):
            continue
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                rows.append((_safe(path.stem), _safe(name), float(value)))
    return rows


def model_card(config: Config, repo_id: str, step: int, params: int, evals: list[tuple[str, str, float]]) -> str:
    """The card's markdown: what the model is, how it was trained, how to load it, what it was measured at."""
    plugins = ", ".join(_safe(p) for p in config.plugins) or "none"
    title = f"JiT {_safe(config.model)} on {_safe(config.data.name)} ({config.data.image_size} px)"
    if config.plugins:      # the core names no plugin: each is listed as enabled (its own docs cite its paper)
        title += f" with {plugins}"
    cites = ["JiT: Li & He, *Back to Basics: Let Denoising Generative Models Denoise*, arXiv 2511.13720"]
    lines = [
        "---",
        "library_name: jit-vco",
        "license: mit",
        "tags:",
        "- diffusion",
        "- pixel-space",
        "- class-conditional",
        *[f"- {_safe(p)}" for p in config.plugins],
        "---",
        "",
        f"# {title}",
        "",
        f"A class-conditional pixel-space diffusion model (x-prediction, flow matching) trained with "
        f"jit-vco {__version__} for **{step:,} steps**: {params:,} trainable parameters, "
        f"plugins: {plugins}.",
        "",
        "## Files",
        "",
        "- `checkpoint-last.pth`: the weights in the official JiT / V-Co layout (`model`, `model_ema1`, `model_ema2`).",
        "- `config.json`: the run's resolved jit-vco config.",
        "- `jit-run.json`: the exported step.",
        "",
        "## Use",
        "",
        "```python",
        "from jit_core import api",
        f'run = api.load_run("hf://{repo_id}")          # EMA1 weights, eval mode',
        "images = api.generate(run, torch.arange(10), cfg=2.0)",
        "```",
        "",
        f"or as a run folder: `jit convert hf://{repo_id}/checkpoint-last.pth runs/imported`.",
        "",
        "## Training",
        "",
        "| key | value |",
        "|---|---|",
        f"| model | {_safe(config.model)} |",
        f"| data | {_safe(config.data.name)}, {config.data.image_size} px |",
        f"| batch per rank | {config.optim.batch_size} |",
        f"| steps | {step:,} |",
        f"| plugins | {plugins} |",
        f"| sampler | {_safe(config.sample.method)}, {config.sample.steps} steps, CFG {config.sample.cfg:g} |",
        "",
    ]
    if evals:
        lines += ["## Evaluation", "", "| evaluation | metric | value |", "|---|---|---|",
                  *(f"| {stem} | {name} | {value:.4g} |" for stem, name, value in evals), ""]
    lines += ["## Citation", "", *(f"- {c}" for c in cites), ""]
    return "\n".join(lines)
