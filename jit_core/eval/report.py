"""``jit compare``: a side-by-side report of several runs or arms (loss curves, samples, metrics, config diff).

An *arm* is one or more runs (training seeds) of the same recipe: :func:`compare_arms` reports per arm the
mean and 95 % interval of each metric and whether each arm's difference to the baseline arm is outside the
noise (:mod:`jit_core.eval.arms`, :mod:`jit_core.eval.stats`), in ``arms.json`` / ``metrics.md`` /
``index.html``; loss curves use every run of an arm, samples and config differences each arm's first run
(:mod:`jit_core.eval.plots`, :mod:`jit_core.eval.figures`, :mod:`jit_core.eval.configdiff`). One run per arm is
the plain side-by-side of runs.

The report folder holds ``loss_curves.png``/``.pdf`` (x = step) and ``loss_curves_time.png``/``.pdf`` (x =
wall clock), one subplot per loss term and per arm the mean over its seeds with a min-max band (a one-point
run as a marker); ``forest.png``/``.pdf`` (each arm's difference to the baseline on the primary metric with
its 95 % interval); ``metric_vs_step.png``/``.pdf`` when runs were evaluated at several checkpoints (``jit
evaluate --all-checkpoints``: the primary metric against the training step, mean and band over seeds per arm);
``arms.csv``/``arms.tex`` and ``runs.csv``/``runs.tex`` (the tables of ``index.html``,
for a paper); ``classes_<name>.png`` (each arm's first run: one row of samples per class, titled with the
class name, :mod:`jit_core.eval.sheets`); ``samples.png`` (every run sampled with the same seeds
and labels, one titled panel each) and ``samples_<name>.png``; ``metrics.md`` / ``metrics.json`` (the
runs' ``eval/*.json`` results, with step, parameter count and wall time); ``config_diff.md`` (the
flattened config keys, plugin options included, that differ); and ``index.html`` showing all of it.
"""
from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from jit_core import durable

from . import plots
from .configdiff import config_diff, diff_cell, diff_markdown
from .figures import placeholder, side_by_side, titled_panel
from .results import METRIC_COLUMNS
from .sheets import per_class_sheet

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- run folders
def run_names(run_dirs: Sequence[str | Path]) -> list[str]:
    """Folder names, made unique with the parent folder's name, then a counter."""
    paths = [Path(p).resolve() for p in run_dirs]
    base = [p.name for p in paths]
    names = [f"{p.parent.name}-{p.name}" if base.count(p.name) > 1 and p.parent.name else p.name for p in paths]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def read_log(run_dir: str | Path) -> list[dict]:
    """The run's ``metrics.jsonl`` records (unreadable lines and lines that are not objects skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(row, dict):     # untrusted lines: only objects are log records
                rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- plots
# ----------------------------------------------------------------------------------- metrics table
def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def wall_time(seconds) -> str:
    """A duration for people, the one unit of the report's tables: ``45 s``, ``2 min 05 s``, ``1 h 12 min``; ``-`` if unknown."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "-"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def metrics_markdown(table: dict) -> str:
    runs = table["runs"]
    cols = [c for c in METRIC_COLUMNS if any(e["metrics"].get(c) is not None for r in runs.values() for e in r["evals"])]
    head = ["run", "step", "params", "wall time", "evaluation", "cfg", "images"] + cols
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in runs.items():
        base = [name, _fmt(r["step"]), f"{r['params']:,}" if r["params"] else "-",
                wall_time(r["wall_time_s"])]
        for e in r["evals"] or [None]:
            if e is None:
                lines.append("| " + " | ".join(base + ["(not evaluated)", "-", "-"] + ["-"] * len(cols)) + " |")
                continue
            lines.append("| " + " | ".join(base + [e["name"], _fmt(e["cfg"]), _fmt(e["num_images"])]
                                            + [_fmt(e["metrics"].get(c)) for c in cols]) + " |")
    if any(c.startswith("fd_classifier") for c in cols):
        lines.append("\nfd_classifier: Fréchet distance in a small classifier's feature space (not FID); "
                     "fd_classifier_real_train: the same distance for real train images (the floor).")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- the report
def _html_table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


# ----------------------------------------------------------------------------------- arms (several seeds each)
EVAL_KWARGS = ("evaluate", "ema", "num_images", "cfg", "steps", "method", "interval", "eval_seed", "metrics",
               "batch_size", "ref_stats", "ref_dir", "inception_weights", "bootstrap", "device", "trust_plugins",
               "save")


def _file_safe(name: str) -> str:
    """A file name part for an arm: the name itself when it is safe, else a safe form plus a hash of the name (so
    ``a b`` and ``a_b`` get different files)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    if safe == name:
        return name
    return f"{safe or 'arm'}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


CLASS_SHEET_PER_CLASS = 4   # samples of each class in classes_<arm>.png


def _sample_panel(d: Path, label: str, out: Path, num_samples: int, seed: int, cfg, device, trust_plugins):
    """``(panel, step, params)``: samples of the run at ``d`` (a placeholder if it cannot be sampled)."""
    from jit_core.eval.evaluate import class_major_labels
    from jit_core.images import make_grid
    from jit_core.runs import loading
    loading.load_run_config(d, trust_plugins)  # an untrusted plugin module stops the report, not only this run's samples
    step = params = None
    try:
        run = loading.load_run(d, device=device, trust_plugins=trust_plugins)
        step, params = run.step, run.model.num_params()
        labels = class_major_labels(num_samples, run.model.cfg.num_classes)
        imgs = loading.generate(run, labels, cfg=cfg, seed=seed)
        grid = make_grid(imgs, nrow=math.ceil(math.sqrt(num_samples)), scale=max(1, 96 // run.model.cfg.image_size))
        # one row per class, titled with its name (the same seed and cfg)
        per_class_sheet(run, CLASS_SHEET_PER_CLASS, out / f"classes_{_file_safe(label)}.png", seed=seed, cfg=cfg)
    except Exception as e:  # noqa: BLE001 -- a run without a checkpoint still gets its curves and config
        log.warning("no samples for %s: %s", d, e)
        grid = placeholder(f"no samples: {type(e).__name__}")
    durable.save_image(out / f"samples_{_file_safe(label)}.png", grid)
    return titled_panel(grid, label), step, params


def _run_labels(arms: dict[str, list[Path]]) -> dict[str, list[str]]:
    """Unique labels of every run: ``arm/seedfolder`` (the arm name alone when it has one run)."""
    labels, seen = {}, set()
    for arm, dirs in arms.items():
        out = []
        for i, d in enumerate(dirs):
            label = arm if len(dirs) == 1 else f"{arm}/{Path(d).name}"
            while label in seen:
                label = f"{arm}/{i}-{Path(d).name}"
                i += 1
            seen.add(label)
            out.append(label)
        labels[arm] = out
    return labels


def compare_arms(arms: dict[str, list[Path]], out_dir: Path, baseline: str | None = None,
                 paper: dict[str, str] | None = None, title: str | None = None, num_samples: int = 20,
                 seed: int = 0, *, sample_cfg: float | None = None, **eval_kwargs) -> dict:
    """Compare arms (arm name -> run folders, one per training seed) against a baseline arm; write the report.

    ``baseline``: the arm the others are compared with (default: the first). ``paper``: arm -> the paper's
    direction for that arm relative to the baseline, ``"worse"`` | ``"better"`` | ``""`` (no claim); adds
    the columns "paper" and "ours" (agrees | disagrees | within noise, on the primary metric).
    ``num_samples`` / ``seed`` / ``sample_cfg``: the same-seed sample grid of each arm's first run (cfg:
    ``sample_cfg``, else the ``cfg`` keyword, else each run's own).

    ``eval_kwargs`` choose the evaluation compared, read from each run's ``eval/*.json``: ``ema``,
    ``num_images``, ``cfg``, ``steps``, ``method``, ``interval``, ``eval_seed``, ``metrics`` (None: any, as
    long as every run has the same settings; mixed settings are refused). With ``evaluate=True`` a run
    without a matching evaluation is evaluated with those settings (and ``batch_size``, ``ref_stats``,
    ``ref_dir``, ``inception_weights``, ``bootstrap``, ``device``, ``trust_plugins``, ``save``).

    Returns ``{"title", "baseline", "primary_metric", "metrics", "sentence", "what_this_shows",
    "eval_settings", "rows": [per arm: arm, runs, n_runs, n, baseline, steps, metrics {name: ArmSummary
    dict: n, mean, lo, hi, values, method, ...}, verdicts {name: Verdict dict: better, diff, lo, hi,
    outside_noise, sentence, method}, paper, ours], "runs": {label: run_dir}, "paths": {...}}``, also
    written to ``arms.json``.
    """
    from jit_core.eval import arms as A
    unknown = sorted(set(eval_kwargs) - set(EVAL_KWARGS))
    if unknown:
        raise TypeError(f"compare_arms got unknown keyword(s) {', '.join(unknown)}: use {', '.join(EVAL_KWARGS)}")
    arms = {str(a): [Path(d) for d in ds] for a, ds in arms.items()}
    if not arms or any(not ds for ds in arms.values()):
        raise ValueError("compare_arms needs at least one arm, each with at least one run folder")
    A.check_distinct_runs(arms)
    files = {_file_safe(a).lower(): a for a in arms}     # lower: case-insensitive file systems
    if len(files) < len(arms):
        clash = sorted(set(arms) - set(files.values()))[0]
        raise ValueError(f"arm names {clash!r} and {files[_file_safe(clash).lower()]!r} differ only in case, so their "
                         "sample files would be one on some file systems: rename one arm")
    baseline = baseline or next(iter(arms))
    if baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not an arm: use one of {', '.join(arms)}")
    for arm, direction in (paper or {}).items():
        if arm not in arms or direction not in A.PAPER_DIRECTIONS:
            raise ValueError(f"paper[{arm!r}] = {direction!r}: the key must be an arm ({', '.join(arms)}) and the "
                             "value 'worse', 'better' or '' (no claim)")
    kw = dict(eval_kwargs)
    trust = kw.get("trust_plugins") or ()
    device = kw.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    out = durable.ensure_dir(Path(out_dir))
    labels = _run_labels(arms)
    runs = {label: d for arm in arms for label, d in zip(labels[arm], arms[arm])}
    want = {k: kw.get(k) for k in A.SELECT_KEYS}
    for d in runs.values():
        if not (d / "config.json").is_file():
            raise ValueError(f"{d} is not a run folder (no config.json)")
    if kw.get("evaluate"):
        from jit_core.eval.evaluate import evaluate_run
        todo = [(label, d) for label, d in runs.items()
                if not [r for r in A.read_evaluations(d) if A._matches(A.settings_of(r), want)]]
        for i, (label, d) in enumerate(todo, 1):
            log.info("evaluating %s (%d of %d runs without a matching evaluation): %s", label, i, len(todo), d)
            evaluate_run(d, num_images=kw.get("num_images"), cfg=kw.get("cfg"), steps=kw.get("steps"),
                         method=kw.get("method"), interval=kw.get("interval"), ema=kw.get("ema") or "ema1",
                         seed=kw.get("eval_seed") or 0, batch_size=kw.get("batch_size"),
                         ref_stats=kw.get("ref_stats"), ref_dir=kw.get("ref_dir"),
                         inception_weights=kw.get("inception_weights"), save=kw.get("save") or "png",
                         metrics=kw.get("metrics") or "auto", device=device, progress=True,
                         trust_plugins=trust, bootstrap=kw.get("bootstrap"))
    records, settings = A.select_evaluations(runs, want)
    table = A.arm_table(labels, records, baseline, paper)
    sentence = A.top_sentence(table)
    paragraph = A.what_this_shows(table, settings, records)
    title = title or "Comparison: " + " vs ".join(arms)

    # every file goes to a staging folder first, then replaces the previous report's (index.html last): a full
    # disk or an error on the way leaves the previous report whole
    with durable.staged(out, last=("index.html",)) as stage:
        # loss curves of every seed (mean and band per arm); samples and config differences of each arm's first run
        firsts = {arm: arms[arm][0] for arm in arms}
        seed_logs = {arm: [read_log(d) for d in ds] for arm, ds in arms.items()}
        plots.plot_loss_bands(seed_logs, stage / "loss_curves", "step")
        plots.plot_loss_bands(seed_logs, stage / "loss_curves_time", "time")
        m = table["primary_metric"]
        if m:
            plots.plot_forest(table, m, baseline, stage / "forest", label=A.LABELS.get(m, m),
                              lower_is_better=A.LOWER_IS_BETTER.get(m))
        plots.write_table(stage / "arms", *_arms_cells(table))
        over_training = m and _metric_vs_step(arms, m, stage)
        panels, per_run = [], {}
        if sample_cfg is None and isinstance(kw.get("cfg"), (int, float)):
            sample_cfg = kw["cfg"]
        for arm, d in firsts.items():
            panel, step, params = _sample_panel(d, arm, stage, num_samples, seed, sample_cfg, device, trust)
            panels.append(panel)
            per_run[arm] = (step, params)
        side_by_side(panels, stage / "samples.png")
        class_sheets = [arm for arm in arms if (stage / f"classes_{_file_safe(arm)}.png").is_file()]
        configs = {arm: json.loads((d / "config.json").read_text()) for arm, d in firsts.items()}
        diff = config_diff(configs)
        durable.write_text(stage / "config_diff.md", diff_markdown(diff, list(arms)))

        runs_table = {"runs": {}}
        for label, d in runs.items():
            r = records.get(label)
            last = (read_log(d) or [{}])[-1]
            evals = [] if r is None else [{"name": r.get("name"), "cfg": (r.get("guidance") or {}).get("cfg"),
                                           "num_images": (r.get("samples") or {}).get("num_images"),
                                           "metrics": r["metrics"], "intervals": r.get("intervals") or {},
                                           "metric_kind": r.get("metric_kind"), "json": r.get("json")}]
            first = per_run.get(label) if len(arms.get(label, ())) == 1 else None   # a one-run arm's sampled run
            recorded = ((r or {}).get("model") or {}).get("trainable_params")      # the evaluation's record of the model
            params = recorded if isinstance(recorded, int) and not isinstance(recorded, bool) else (first or (0, None))[1]
            runs_table["runs"][label] = {"run_dir": str(d.resolve()),
                                         "step": (r or {}).get("checkpoint", {}).get("step") or last.get("step"),
                                         "params": params, "wall_time_s": last.get("time"),
                                         "evals": evals}
        runs_table["samples"] = {"num_samples": num_samples, "seed": seed, "runs": "each arm's first run",
                                 "cfg": sample_cfg if sample_cfg is not None else "each run's own"}
        durable.write_json(stage / "metrics.json", runs_table, default=str)
        paths = {"index_html": str(out / "index.html"), "metrics_md": str(out / "metrics.md"),
                 "arms_json": str(out / "arms.json"), "metrics_json": str(out / "metrics.json"),
                 "config_diff_md": str(out / "config_diff.md"), "samples_png": str(out / "samples.png"),
                 "loss_curves_png": str(out / "loss_curves.png"), "forest_png": str(out / "forest.png") if m else None,
                 "metric_vs_step_png": str(out / "metric_vs_step.png") if over_training else None,
                 "class_sheets": {arm: str(out / f"classes_{_file_safe(arm)}.png") for arm in class_sheets}}
        result = {"title": title, "baseline": baseline, "primary_metric": table["primary_metric"],
                  "metrics": table["metrics"], "sentence": sentence, "what_this_shows": paragraph,
                  "eval_settings": settings, "rows": table["rows"], "runs": {k: str(v) for k, v in runs.items()},
                  "paths": paths}
        plots.write_table(stage / "runs", RUNS_HEAD, _runs_rows(runs_table))
        md = A.arms_markdown(table, sentence, paragraph, settings, title)
        durable.write_text(stage / "metrics.md", md + "\n## Runs\n\n" + metrics_markdown(runs_table))
        durable.write_json(stage / "arms.json", result, default=str)
        durable.write_text(stage / "index.html", _arms_html(result, table, runs_table, diff, list(arms), num_samples, seed))
    return result


def _metric_vs_step(arms: dict[str, list[Path]], metric: str, stage: Path) -> bool:
    """``metric_vs_step.png`` / ``.pdf`` when some run was evaluated at two or more steps (``jit evaluate
    --all-checkpoints``); False (no figure) otherwise."""
    from jit_core.eval import arms as A
    from jit_core.eval.over_steps import metric_by_step
    rows, settings = metric_by_step(arms, metric)
    if not any(len(run) > 1 for runs in rows.values() for run in runs):
        return False
    plots.plot_metric_vs_step(rows, metric, stage / "metric_vs_step", label=A.LABELS.get(metric, metric),
                              subtitle=A.describe(settings) if settings else "")
    return True


def _runs_rows(runs_table: dict) -> list[list[str]]:
    """One row per run and evaluation: the Runs table of index.html (the same units as metrics.md)."""
    rows = []
    for name, r in runs_table["runs"].items():
        for e in r["evals"] or [{"name": "(not evaluated)", "cfg": None, "metrics": {}}]:
            vals = ", ".join(f"{k}={_fmt(e['metrics'][k])}" for k in METRIC_COLUMNS if e["metrics"].get(k) is not None)
            rows.append([name, _fmt(r["step"]), f"{r['params']:,}" if r["params"] else "-", wall_time(r["wall_time_s"]),
                         e["name"], _fmt(e["cfg"]), vals or "-"])
    return rows


RUNS_HEAD = ["run", "step", "params", "wall time", "evaluation", "cfg", "metrics"]


def _arms_cells(table: dict) -> tuple[list[str], list[list[str]]]:
    """The Arms table (header, rows): index.html, arms.csv and arms.tex show the same cells."""
    from jit_core.eval import arms as A
    m = table["primary_metric"]
    paper = any("paper" in r for r in table["rows"])
    head = ["arm", "seeds"] + [A.LABELS[k] + (" (lower better)" if A.LOWER_IS_BETTER[k] else " (higher better)")
                               for k in table["metrics"]] + ["vs baseline"] + (["paper", "ours"] if paper else [])
    rows = []
    for r in table["rows"]:
        cells = [r["arm"] + (" (baseline)" if r["baseline"] else ""),
                 f"{r['n']}" + (f" of {r['n_runs']}" if r["n"] != r["n_runs"] else "")]
        cells += [f"{r['metrics'][k]['mean']:.4g} {A._iv(r['metrics'][k])}" if k in r["metrics"] else "-"
                  for k in table["metrics"]]
        v = r["verdicts"].get(m)
        cells.append(A.verdict_cell(v))
        if paper:
            cells += ["-", "-"] if r["baseline"] else [r.get("paper") or "(no claim)", r.get("ours", "-")]
        rows.append(cells)
    return head, rows


def _arms_html(result: dict, table: dict, runs_table: dict, diff, names: list[str], num_samples: int,
               seed: int) -> str:
    head, rows = _arms_cells(table)
    forest = ('<h2>Difference to the baseline</h2><img src="forest.png"> <a href="forest.pdf">PDF</a>'
              if table["primary_metric"] else "")
    if result["paths"].get("metric_vs_step_png"):
        forest += ('<h2>Metric over training (mean and band over seeds)</h2><img src="metric_vs_step.png"> '
                   '<a href="metric_vs_step.pdf">PDF</a>')
    diff_rows = [[k] + [diff_cell(v[n]) for n in names] for k, v in diff]
    figs = "".join(f'<figure><img src="samples_{html.escape(_file_safe(n))}.png"><figcaption>{html.escape(n)}'
                   "</figcaption></figure>" for n in names)
    runs = _html_table(RUNS_HEAD, _runs_rows(runs_table))
    sheets = result["paths"].get("class_sheets") or {}
    classes = ("<h2>Samples per class (first run of each arm)</h2>" + "".join(
        f'<figure><img src="classes_{html.escape(_file_safe(n))}.png"><figcaption>{html.escape(n)}</figcaption>'
        "</figure>" for n in names if n in sheets)) if sheets else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(result['title'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}} img{{max-width:100%}}
figure{{display:inline-block;margin:4px}} .verdict{{font-size:16px;background:#f4f4f4;padding:8px}}</style></head>
<body><h1>{html.escape(result['title'])}</h1>
<p class="verdict">{html.escape(result['sentence'])}</p>
<h2>Arms</h2>{_html_table(head, rows)}
<p>95 % intervals: t over seeds (one seed: bootstrap over that run's samples); the difference to the baseline
arm is outside the noise when its 95 % interval excludes 0. Details: <a href="arms.json">arms.json</a>,
<a href="metrics.md">metrics.md</a>; tables for a paper: <a href="arms.csv">arms.csv</a>, <a href="arms.tex">arms.tex</a>,
<a href="runs.csv">runs.csv</a>, <a href="runs.tex">runs.tex</a>.</p>
<p>{html.escape(result['what_this_shows'])}</p>{forest}
<h2>Training loss (mean and band over seeds)</h2><img src="loss_curves.png"><img src="loss_curves_time.png">
<p>PDF: <a href="loss_curves.pdf">loss_curves.pdf</a>, <a href="loss_curves_time.pdf">loss_curves_time.pdf</a>.</p>
<h2>Samples (first run of each arm)</h2><p>{num_samples} samples per arm, seed {seed}, identical class-major
labels.</p><img src="samples.png"><div>{figs}</div>{classes}
<h2>Runs</h2>{runs}
<h2>Config differences (first runs)</h2>{_html_table(["key"] + names, diff_rows) if diff_rows else "<p>identical</p>"}
<p><a href="config_diff.md">config_diff.md</a></p></body></html>
"""


def _parse_arm(text: str) -> tuple[str, list[str]]:
    name, sep, runs = text.partition("=")
    dirs = [r.strip() for r in runs.split(",") if r.strip()]
    if not sep or not name.strip() or not dirs:
        raise ValueError(f"--arm {text!r}: use NAME=RUN[,RUN...], e.g. --arm JiT=runs/a/s0,runs/a/s1")
    for d in dirs:
        if not Path(d).is_dir():
            raise ValueError(f"--arm {name}: {d} is not a folder")
    return name.strip(), dirs


def compare_command():
    """The ``jit compare`` click command."""
    import click

    from jit_core.clioptions import deprecated_alias, trust_options

    @click.command("compare")
    @click.argument("run_dirs", nargs=-1, type=click.Path(exists=True, file_okay=False))
    @click.option("--arm", "arm_specs", multiple=True, metavar="NAME=RUN[,RUN...]",
                  help="An arm: a name and its runs (training seeds), e.g. --arm JiT=runs/a/s0,runs/a/s1. Repeat "
                       "per arm; a positional RUN is an arm of one run.")
    @click.option("--baseline", help="The arm the others are compared with (default: the first).")
    @click.option("--title", help="Report title.")
    @click.option("--out", type=click.Path(file_okay=False), default="compare", show_default=True,
                  help="Report folder.")
    @click.option("--evaluate/--no-evaluate", default=False, show_default=True,
                  help="Evaluate runs that have no matching eval/*.json yet.")
    @click.option("--num-images", type=int, help="Images per evaluation (selects / evaluates; default: any).")
    @click.option("--eval-cfg", type=float, help="CFG of the evaluation compared (selects / evaluates).")
    @click.option("--eval-ema", type=click.Choice(["ema1", "ema2", "model"]),
                  help="Weights of the evaluation compared (selects / evaluates).")
    @click.option("--eval-seed", type=int, help="Sampling seed of the evaluation compared (selects / evaluates).")
    @click.option("--sheet-images", "num_samples", default=20, show_default=True,
                  help="Images per arm in samples.png (--num-images is the evaluations' count).")
    @deprecated_alias("--num-samples", "--sheet-images", "old_num_samples", type=int)
    @click.option("--seed", default=0, show_default=True, help="Seed of samples.png.")
    @click.option("--cfg", type=float, help="CFG scale for samples.png (default: each run's own).")
    @trust_options
    def cmd(run_dirs, arm_specs, baseline, title, out, evaluate, num_images, eval_cfg, eval_ema, eval_seed,
            num_samples, old_num_samples, seed, cfg, trust_plugins):
        """Compare runs or arms: metrics with 95 % intervals and a verdict, loss curves, samples, config diff."""
        num_samples = num_samples if old_num_samples is None else old_num_samples
        arms: dict[str, list[str]] = {}
        try:
            for spec in arm_specs:
                name, dirs = _parse_arm(spec)
                if name in arms:
                    raise ValueError(f"--arm {name} is given twice")
                arms[name] = dirs
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--arm") from None
        for name, d in zip(run_names(run_dirs), run_dirs):
            arms.setdefault(name, [d])
        if not arms:
            raise click.UsageError("give runs to compare: jit compare RUN RUN, or --arm NAME=RUN,RUN ...")
        try:
            result = compare_arms(arms, Path(out), baseline=baseline, title=title, num_samples=num_samples,
                                  seed=seed, evaluate=evaluate, num_images=num_images,
                                  cfg=eval_cfg if eval_cfg is not None else None, ema=eval_ema, eval_seed=eval_seed,
                                  trust_plugins=trust_plugins, sample_cfg=cfg)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        click.echo(result["sentence"])
        click.echo(f"report: {result['paths']['index_html']}")

    return cmd
