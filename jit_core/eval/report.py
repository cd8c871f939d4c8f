"""``jit compare``: a side-by-side report of several runs (loss curves, samples, metrics, config diff).

The report folder holds ``loss_curves.png`` (x = step) and ``loss_curves_time.png`` (x = wall clock),
one subplot per loss term and one line per run; ``samples.png`` (every run sampled with the same seeds
and labels, one titled panel each) and ``samples_<name>.png``; ``metrics.md`` / ``metrics.json`` (the
runs' ``eval/*.json`` results, with step, parameter count and wall time); ``config_diff.md`` (the
flattened config keys, plugin options included, that differ); and ``index.html`` showing all of it.
"""
from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("fid", "inception_score", "precision", "recall", "fd_classifier", "fd_classifier_real_train",
                  "classifier_accuracy")


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
    """The run's ``metrics.jsonl`` records (unreadable lines skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def loss_terms(logs: dict[str, list[dict]]) -> list[str]:
    keys = {k for rows in logs.values() for r in rows for k in r if k == "loss" or k.startswith("loss/")}
    return sorted(keys, key=lambda k: (k != "loss", k != "loss/pixel", k))


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):  # an empty dict contributes no keys
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


NOT_SET = "(not set)"   # a key one run's config does not have (e.g. another plugin's option)


def _diff_cell(value) -> str:
    return NOT_SET if value is NOT_SET else json.dumps(value, default=str)


def config_diff(configs: dict[str, dict]) -> list[tuple[str, dict[str, object]]]:
    """``[(key, {run: value})]`` for every flattened key whose value differs between the runs.

    ``plugin_options.<plugin>.<option>`` and ``plugins`` are included; ``run_dir`` is ignored.
    """
    flat = {name: flatten(c) for name, c in configs.items()}
    keys = sorted({k for f in flat.values() for k in f} - {"run_dir"})
    missing = object()
    rows = []
    for k in keys:
        vals = {n: f.get(k, missing) for n, f in flat.items()}
        if len({json.dumps(v, default=str) if v is not missing else "<missing>" for v in vals.values()}) > 1:
            rows.append((k, {n: (NOT_SET if v is missing else v) for n, v in vals.items()}))
    return rows


# ----------------------------------------------------------------------------------- plots
def _smooth(ys: list[float], frac: float = 0.05) -> list[float]:
    """Exponential moving average with a window of about ``frac`` of the curve (bias-corrected)."""
    alpha = 1.0 / max(1.0, frac * len(ys))
    out, m, w = [], 0.0, 0.0
    for y in ys:
        m, w = (1 - alpha) * m + alpha * y, (1 - alpha) * w + alpha
        out.append(m / w)
    return out


def plot_losses(logs: dict[str, list[dict]], path: str | Path, x: str = "step") -> Path:
    """One subplot per loss term, one line per run (smoothed, raw curve faint); x = ``step`` or ``time``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    terms = loss_terms(logs) or ["loss"]
    cols = min(3, len(terms))
    rows = math.ceil(len(terms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    tmax = max((r.get("time", 0) or 0 for rows_ in logs.values() for r in rows_), default=0)
    unit, div = ("h", 3600.0) if tmax > 7200 else (("min", 60.0) if tmax > 120 else ("s", 1.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, term in zip(axes.flat, terms):
        for i, (name, rows_) in enumerate(logs.items()):
            pts = [(r.get(x), r.get(term)) for r in rows_ if isinstance(r.get(term), (int, float))
                   and isinstance(r.get(x), (int, float)) and math.isfinite(r[term])]
            if not pts:
                continue
            xs = [p[0] / div if x == "time" else p[0] for p in pts]
            ys = [p[1] for p in pts]
            c = colors[i % len(colors)]
            ax.plot(xs, ys, color=c, alpha=0.25, linewidth=0.8)
            ax.plot(xs, _smooth(ys), color=c, linewidth=1.6, label=name)
        ax.set_title(term)
        ax.set_xlabel("step" if x == "step" else f"wall clock ({unit})")
        ax.grid(alpha=0.3)
        if ax.lines:
            ys_all = [y for ln in ax.lines for y in ln.get_ydata()]
            if min(ys_all) > 0 and max(ys_all) / min(ys_all) > 20:
                ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panel(img, title: str):
    """A grid image with its run name above it."""
    from PIL import Image, ImageDraw
    bar = 22
    canvas = Image.new("RGB", (max(img.width, 8 * len(title) + 10), img.height + bar), "white")
    canvas.paste(img, (0, bar))
    ImageDraw.Draw(canvas).text((4, 5), title, fill="black")
    return canvas


def side_by_side(panels: list, path: str | Path, gap: int = 12) -> Path:
    from PIL import Image
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (max(1, width), max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width + gap
    canvas.save(path)
    return Path(path)


def _placeholder(text: str, size: int = 160):
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (size, size), (235, 235, 235))
    ImageDraw.Draw(img).text((6, size // 2 - 6), text[:24], fill="black")
    return img


# ----------------------------------------------------------------------------------- metrics table
def eval_results(run_dir: str | Path) -> list[dict]:
    """The single-cfg results in ``<run>/eval/*.json`` (sweep summaries are represented by their members)."""
    out = []
    for p in sorted((Path(run_dir) / "eval").glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except ValueError:
            continue
        if isinstance(rec, dict) and "metrics" in rec and rec.get("kind") != "cfg_sweep":
            out.append(rec)
    return out


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
def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, num_samples: int = 20, seed: int = 0,
                 cfg: float | None = None, evaluate: bool = False, num_images: int | None = None,
                 device=None, trust_plugins=()) -> Path:
    """Write the comparison report of ``run_dirs`` into ``out_dir``; returns ``out_dir``.

    ``trust_plugins``: module-path plugins the runs' configs may name (see :func:`jit_core.runs.loading.load_config`)."""
    from jit_core.eval.evaluate import class_major_labels, evaluate_run
    from jit_core.images import make_grid
    from jit_core.runs import loading
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run folder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = run_names(run_dirs)
    dirs = dict(zip(names, (Path(p) for p in run_dirs)))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    logs = {n: read_log(d) for n, d in dirs.items()}
    plot_losses(logs, out / "loss_curves.png", "step")
    plot_losses(logs, out / "loss_curves_time.png", "time")

    panels, configs, table = [], {}, {"runs": {}}
    for name, d in dirs.items():
        configs[name] = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
        run, params = None, None
        loading.load_config(d, trust_plugins)  # an untrusted plugin module stops the report, not only this run's samples
        try:
            run = loading.load_run(d, device=device, trust_plugins=trust_plugins)
            params = run.model.num_params()
            labels = class_major_labels(num_samples, run.model.cfg.num_classes)
            imgs = loading.generate(run, labels, cfg=cfg, seed=seed)
            scale = max(1, 96 // run.model.cfg.image_size)
            grid = make_grid(imgs, nrow=math.ceil(math.sqrt(num_samples)), scale=scale)
        except Exception as e:  # noqa: BLE001 -- a run without a checkpoint still gets its curves and config
            log.warning("no samples for %s: %s", d, e)
            grid = _placeholder(f"no samples: {type(e).__name__}")
        grid.save(out / f"samples_{name}.png")
        panels.append(_panel(grid, name))
        if evaluate and run is not None and not eval_results(d):
            evaluate_run(d, num_images=num_images, device=device, progress=False, trust_plugins=trust_plugins)
        last = logs[name][-1] if logs[name] else {}
        evals = [{"name": e.get("name"), "cfg": e.get("guidance", {}).get("cfg"),
                  "num_images": e.get("samples", {}).get("num_images"), "metrics": e["metrics"],
                  "metric_kind": e.get("metric_kind"), "json": e.get("json")} for e in eval_results(d)]
        table["runs"][name] = {"run_dir": str(d.resolve()), "step": run.step if run else last.get("step"),
                               "params": params, "wall_time_s": last.get("time"), "evals": evals}
    side_by_side(panels, out / "samples.png")
    table["samples"] = {"num_samples": num_samples, "seed": seed, "cfg": cfg if cfg is not None else "each run's own",
                        "labels": "class-major, floor(n * C / N)"}
    (out / "metrics.json").write_text(json.dumps(table, indent=1, default=str))
    (out / "metrics.md").write_text("# Metrics\n\n" + metrics_markdown(table))
    diff = config_diff(configs)
    (out / "config_diff.md").write_text(_diff_markdown(diff, names))
    (out / "index.html").write_text(_index_html(names, dirs, table, diff, seed, num_samples))
    return out


def _diff_markdown(diff, names) -> str:
    if not diff:
        return "# Config differences\n\nThe runs' configs are identical (run_dir aside).\n"
    lines = ["# Config differences", "", "| key | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for key, vals in diff:
        cells = (NOT_SET if vals[n] is NOT_SET else f"`{_diff_cell(vals[n])}`" for n in names)
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _index_html(names, dirs, table, diff, seed, num_samples) -> str:
    metric_rows = []
    for name, r in table["runs"].items():
        for e in r["evals"] or [{"name": "(not evaluated)", "cfg": None, "metrics": {}}]:
            vals = ", ".join(f"{k}={_fmt(e['metrics'][k])}" for k in METRIC_COLUMNS if e["metrics"].get(k) is not None)
            metric_rows.append([name, _fmt(r["step"]), _fmt(r["params"]), wall_time(r["wall_time_s"]), e["name"],
                                _fmt(e["cfg"]), vals or "-"])
    diff_rows = [[k] + [_diff_cell(v[n]) for n in names] for k, v in diff]
    runs = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(str(dirs[n].resolve()))}</li>" for n in names)
    per_run = "".join(f'<figure><img src="samples_{html.escape(n)}.png"><figcaption>{html.escape(n)}</figcaption>'
                      "</figure>" for n in names)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>jit compare: {html.escape(' vs '.join(names))}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}} img{{max-width:100%}}
figure{{display:inline-block;margin:4px}}</style></head><body>
<h1>Run comparison</h1><ul>{runs}</ul>
<h2>Training loss</h2><img src="loss_curves.png"><img src="loss_curves_time.png">
<h2>Samples</h2><p>{num_samples} samples per run, seed {seed}, identical class-major labels.</p>
<img src="samples.png"><div>{per_run}</div>
<h2>Metrics</h2>{_html_table(["run", "step", "params", "wall time", "evaluation", "cfg", "metrics"], metric_rows)}
<p>Details: <a href="metrics.md">metrics.md</a>, <a href="metrics.json">metrics.json</a>.
fd_classifier is a Fréchet distance in a small classifier's feature space, not FID.</p>
<h2>Config differences</h2>{_html_table(["key"] + list(names), diff_rows) if diff_rows else "<p>identical</p>"}
<p><a href="config_diff.md">config_diff.md</a></p></body></html>
"""


def compare_command():
    """The ``jit compare`` click command."""
    import click

    from jit_core.runs.loading import trust_options

    @click.command("compare")
    @click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
    @click.option("--out", type=click.Path(file_okay=False), default="compare", show_default=True,
                  help="Report folder.")
    @click.option("--evaluate/--no-evaluate", default=False, show_default=True,
                  help="Evaluate runs that have no eval/*.json yet.")
    @click.option("--num-images", type=int, help="Images per evaluation (with --evaluate; default: the run's).")
    @click.option("--num-samples", default=20, show_default=True, help="Samples per run in samples.png.")
    @click.option("--seed", default=0, show_default=True)
    @click.option("--cfg", type=float, help="CFG scale for samples.png (default: each run's own).")
    @trust_options
    def cmd(run_dirs, out, evaluate, num_images, num_samples, seed, cfg, trust_plugins):
        """Compare runs: loss curves, samples from the same seeds, metrics, config differences."""
        folder = compare_runs(run_dirs, out, num_samples=num_samples, seed=seed, cfg=cfg, evaluate=evaluate,
                              num_images=num_images, trust_plugins=trust_plugins)
        click.echo(f"report: {folder / 'index.html'}")

    return cmd
