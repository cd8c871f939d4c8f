"""Metrics over training: the results of every saved checkpoint of a run
(:func:`jit_core.eval.evaluate.evaluate_all_checkpoints`, ``jit evaluate --all-checkpoints``) gathered per
training step, for the metric-vs-step figure (:func:`jit_core.eval.plots.plot_metric_vs_step`)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from jit_core.eval import arms as A


def _step(rec: dict):
    ck = rec.get("checkpoint")
    step = ck.get("step") if isinstance(ck, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def common_settings(records: dict[str, list[dict]], metric: str) -> str | None:
    """The evaluation settings (all but the step) that most runs have results of ``metric`` for; None if none."""
    runs_with: Counter[str] = Counter()
    for recs in records.values():
        runs_with.update({A.settings_id(A.settings_of(r)) for r in recs if metric in (r.get("metrics") or {})})
    return max(runs_with, key=lambda k: (runs_with[k], k)) if runs_with else None


def metric_by_step(arms: Mapping[str, Sequence[Path]], metric: str) -> tuple[dict[str, list[list[dict]]], dict | None]:
    """Per arm, one list per run of ``{"step", metric}`` rows read from the runs' ``eval/*.json``, all with the
    same evaluation settings (those most runs have); returns ``(rows per arm, those settings)``."""
    import json
    records = {f"{arm}/{i}": A.read_evaluations(Path(d)) for arm, ds in arms.items() for i, d in enumerate(ds)}
    key = common_settings(records, metric)
    out: dict[str, list[list[dict]]] = {arm: [] for arm in arms}
    for label, recs in records.items():
        rows = sorted(({"step": _step(r), metric: r["metrics"][metric]} for r in recs
                       if key is not None and A.settings_id(A.settings_of(r)) == key and _step(r) is not None
                       and metric in r["metrics"]), key=lambda row: row["step"])
        out[label.rsplit("/", 1)[0]].append(rows)
    return out, (json.loads(key) if key else None)


def step_figure(run_dir, results: list[dict], out: Path) -> Path | None:
    """``<out>/metric_vs_step.png`` / ``.pdf`` of one run's :func:`evaluate_all_checkpoints` results: the primary
    metric against the step, one line per weights and CFG scale. None when no result has a primary metric."""
    from jit_core.eval import plots
    records = [r for res in results for r in (res.get("results") or [res])]
    metric = next((r.get("primary_metric") for r in records if r.get("primary_metric")), None)
    if metric is None:
        return None
    lines: dict[str, list[list[dict]]] = {}
    for r in records:
        value = (r.get("metrics") or {}).get(metric)
        if value is None or _step(r) is None:
            continue
        s = A.settings_of(r)
        lines.setdefault(f"{s['ema']} cfg {s['cfg']:g}", [[]])[0].append({"step": _step(r), metric: value})
    png, _pdf = plots.plot_metric_vs_step(lines, metric, out / "metric_vs_step", label=A.LABELS.get(metric, metric),
                                          subtitle=Path(run_dir).name)
    return png
