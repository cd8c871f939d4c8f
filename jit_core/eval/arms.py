"""Arms of a comparison (several runs = training seeds each): pick comparable evaluations, summarise, decide.

:func:`select_evaluations` picks, for every run, the ``eval/*.json`` record with the evaluation settings
common to all runs (refusing to mix settings); :func:`arm_table` turns them into per-arm means and
intervals per metric (:func:`jit_core.eval.stats.summarize_arm`) and verdicts against the baseline arm
(:func:`jit_core.eval.stats.compare_arms_stats`); :func:`arms_markdown` writes it as text.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TypeGuard

from jit_core.eval import stats
from jit_core.eval.record_checks import check_record, read_record

ARM_METRICS = ("fid", "inception_score", "precision", "recall", "fd_classifier", "classifier_accuracy")
LOWER_IS_BETTER = {"fid": True, "inception_score": False, "precision": False, "recall": False,
                   "fd_classifier": True, "classifier_accuracy": False}
LABELS = {"fid": "FID", "inception_score": "Inception score", "precision": "precision", "recall": "recall",
          "fd_classifier": "Fréchet distance (classifier features)", "classifier_accuracy": "classifier accuracy"}
PAPER_DIRECTIONS = ("worse", "better", "")
# compare_arms keywords that select (and, with evaluate=True, produce) the evaluation compared
SELECT_KEYS = ("ema", "num_images", "cfg", "steps", "method", "interval", "eval_seed", "metrics")


def settings_of(rec: dict) -> dict:
    """The evaluation settings of a result record (not the training step: that is reported, not matched)."""
    def part(key):   # result files are untrusted input: a section that is not a dict counts as missing
        return rec.get(key) if isinstance(rec.get(key), dict) else {}
    g, sm, sa = part("guidance"), part("sampler"), part("samples")
    iv = _interval(g.get("interval"))
    return {"ema": part("checkpoint").get("weights"), "num_images": sa.get("num_images"),
            "method": sm.get("method"), "steps": sm.get("steps"), "cfg": g.get("cfg"),
            "interval": list(iv) if iv else None,
            "eval_seed": sa.get("seed"), "metric_kind": rec.get("metric_kind")}


def settings_id(settings: dict) -> str:
    """One string per evaluation setting (:func:`settings_of`): evaluations compared must share it."""
    return json.dumps(settings, sort_keys=True)


def describe(settings: dict) -> str:
    s = settings
    iv = s.get("interval")
    return (f"{s.get('ema')}, {s.get('num_images')} images, {s.get('method')}-{s.get('steps')}, cfg {s.get('cfg')}"
            + (f" interval {iv[0]:g}-{iv[1]:g}" if iv else "") + f", sampling seed {s.get('eval_seed')}, "
            f"metric {s.get('metric_kind')}")


def settings_match(settings: dict, want: dict) -> bool:
    """Whether an evaluation's settings are the ones asked for (``want``: None leaves a key free)."""
    for k, v in want.items():
        if v is None:
            continue
        have = settings.get("metric_kind" if k == "metrics" else k)
        if k == "metrics":
            v = {"fid": "inception", "auto": have}.get(v, v)
        if k == "interval":
            v = [float(x) for x in v]
        if k in ("cfg",):
            v = float(v)
        if have != v:
            return False
    return True


def read_evaluations(run_dir: Path) -> list[dict]:
    """Single-point result records of ``<run>/eval/*.json`` (grid and sweep summaries skipped). A record with
    wrong types is refused (:class:`jit_core.eval.record_checks.ResultFileError`), never silently skipped."""
    out = []
    for p in sorted((Path(run_dir) / "eval").glob("*.json")):
        rec = read_record(p)
        if isinstance(rec, dict) and "metrics" in rec and "results" not in rec:
            out.append(check_record(rec, p))
    return out


def check_distinct_runs(arms: dict[str, list[Path]]) -> None:
    """Each run folder once: a run listed twice (in one arm or two) would count as two training seeds."""
    seen: dict[Path, str] = {}
    for arm, dirs in arms.items():
        for d in dirs:
            key = Path(d).resolve()
            if key in seen:
                where = f"twice in arm {arm!r}" if seen[key] == arm else f"in arms {seen[key]!r} and {arm!r}"
                raise ValueError(f"run {d} is listed {where}: one run is one training seed; list each run once")
            seen[key] = arm


def _training(rec: dict) -> tuple:
    """``(steps, images seen)`` a result record says its checkpoint was trained for (None when not recorded)."""
    step = _newest(rec)[0] or None
    batch = (rec.get("training") or {}).get("global_batch")
    return step, step * batch if step is not None and _number(batch) else None


def comparability_flags(evaluated: dict[str, list[dict]], summaries: dict[str, dict]) -> list[str]:
    """What makes the arms' numbers incomparable or degenerate, one sentence each (empty: nothing found)."""
    flags = []
    runs = [(arm, _training(r)) for arm, rs in evaluated.items() for r in rs]
    for i, what in ((0, "steps"), (1, "images")):
        values = {t[i] for _, t in runs if t[i] is not None}
        if len(values) > 1:
            per_arm = "; ".join(f"{arm} " + ", ".join(str(t[i]) for a, t in runs if a == arm and t[i] is not None)
                                for arm in evaluated)
            flags.append(f"not comparable: the runs were trained for different numbers of {what} ({per_arm})")
            break
    for arm, rs in evaluated.items():
        acc = summaries.get(arm, {}).get("classifier_accuracy")
        classes = {(r.get("model") or {}).get("num_classes") for r in rs}
        if acc is not None and len(classes) == 1 and _number(c := classes.pop()) and c > 1 and acc.mean <= 1.5 / c:
            flags.append(f"{arm}'s samples are classified at chance level (accuracy {acc.mean:.1%}, chance "
                         f"{1 / c:.1%}): its distances compare unrecognisable images")
    return flags


def select_evaluations(runs: dict[str, Path], want: dict | None = None) -> tuple[dict[str, dict | None], dict | None]:
    """``({run label: record or None}, settings)``: one record per run, all with the same settings.

    ``want`` narrows the settings (keys of :data:`SELECT_KEYS`; None values ignored). Runs without any
    matching record get None (not evaluated). Raises ValueError when the evaluated runs share no settings,
    or share several and ``want`` does not say which.
    """
    want = {k: v for k, v in (want or {}).items() if v is not None}
    per_run = {label: [r for r in read_evaluations(d) if settings_match(settings_of(r), want)] for label, d in runs.items()}
    evaluated = {k: v for k, v in per_run.items() if v}
    if not evaluated:
        return {label: None for label in runs}, None
    keys = [{settings_id(settings_of(r)) for r in recs} for recs in evaluated.values()]
    common = set.intersection(*keys)
    if not common:
        lines = "; ".join(f"{label}: " + " | ".join(sorted(describe(settings_of(r)) for r in recs))
                          for label, recs in evaluated.items())
        raise ValueError(f"the runs' evaluations have no settings in common, refusing to mix them ({lines}); "
                         "evaluate every run alike (same --ema/--num-images/--cfg/--steps/--seed), or pass them "
                         "to compare with --evaluate")
    if len(common) > 1:
        opts = " | ".join(sorted(describe(json.loads(k)) for k in common))
        raise ValueError(f"several evaluation settings are common to all runs ({opts}): choose one with "
                         "--eval-cfg / --eval-ema / --eval-num-images / --eval-seed")
    key = common.pop()
    chosen = {}
    for label in runs:
        recs = [r for r in per_run[label] if settings_id(settings_of(r)) == key]
        # the newest checkpoint's evaluation, then the newest evaluation of it
        chosen[label] = max(recs, key=_newest) if recs else None
    return chosen, json.loads(key)


def _number(x: object) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _interval(x) -> tuple[float, float] | None:
    """A record's ``[lo, hi]`` if it is one (result files are untrusted input), else None."""
    if isinstance(x, (list, tuple)) and len(x) == 2 and all(_number(v) for v in x) and x[0] <= x[1]:
        return float(x[0]), float(x[1])
    return None


def _newest(rec: dict) -> tuple:
    ck = rec.get("checkpoint")
    if not isinstance(ck, dict):
        ck = {}
    step = ck.get("step") if _number(ck.get("step")) else 0
    return step, str(rec.get("date") or "")


def arm_table(arms: dict[str, list[str]], records: dict[str, dict | None], baseline: str,
              paper: dict[str, str] | None = None) -> dict:
    """Per-arm summaries and verdicts. ``arms``: arm name -> run labels; ``records``: run label -> record."""
    evaluated = {a: [rec for r in labels if (rec := records.get(r))] for a, labels in arms.items()}
    recs = [r for rs in evaluated.values() for r in rs]
    primary = next((r.get("primary_metric") for r in recs if r.get("primary_metric")), None)
    metrics = [m for m in ARM_METRICS if recs and all(_number(r["metrics"].get(m)) for r in recs)]
    rows = []
    summaries: dict[str, dict[str, stats.ArmSummary]] = {}
    for arm, rs in evaluated.items():
        summaries[arm] = {}
        for m in metrics if rs else ():
            summaries[arm][m] = stats.summarize_arm(arm, [r["metrics"][m] for r in rs],
                                                    [_interval((r.get("intervals") or {}).get(m)) if
                                                     isinstance(r.get("intervals"), dict) else None for r in rs],
                                                    lower_is_better=LOWER_IS_BETTER[m])
    for arm, labels in arms.items():
        row: dict[str, Any] = {"arm": arm, "runs": list(labels), "n_runs": len(labels), "n": len(evaluated[arm]),
               "baseline": arm == baseline,
               "steps": [_newest(r)[0] or None for r in evaluated[arm]],
               "metrics": {m: s.to_dict() for m, s in summaries[arm].items()}, "verdicts": {}}
        if arm != baseline and summaries[arm] and summaries.get(baseline):
            for m in metrics:
                v = stats.compare_arms_stats(summaries[arm][m], summaries[baseline][m], LOWER_IS_BETTER[m],
                                             LABELS[m])
                row["verdicts"][m] = v.to_dict()
        if paper is not None and arm != baseline:
            row["paper"] = paper.get(arm, "")
            row["ours"] = agreement(row["verdicts"].get(primary), arm, row["paper"])
        rows.append(row)
    for row in rows:
        row["params"] = trainable_params(evaluated[row["arm"]])
    return {"primary_metric": primary, "metrics": metrics, "rows": rows,
            "flags": comparability_flags(evaluated, summaries)}


def trainable_params(records: list[dict]) -> int | None:
    """The trainable parameter count the arm's evaluations record (None: unrecorded, or the seeds disagree)."""
    counts = {(r.get("model") or {}).get("trainable_params") if isinstance(r.get("model"), dict) else None
              for r in records}
    return counts.pop() if len(counts) == 1 and _number(c := next(iter(counts))) and c > 0 else None


SIZE_TOLERANCE = 0.02   # a parameter-matched control is within 2 % (arXiv 2603.16792, Table 1's widened JiT)


def size_note(row: dict, baseline: dict | None) -> str:
    """`` ARM has 1.96x BASE's trainable parameters (1,424,024 vs 728,368).`` when the sizes differ by more than
    :data:`SIZE_TOLERANCE`, so that a verdict between networks of different sizes says so; else empty."""
    base = baseline or {}
    p, q = row.get("params"), base.get("params")
    if not (p and q) or abs(p / q - 1) <= SIZE_TOLERANCE:
        return ""
    return f" {row['arm']} has {p / q:.2f}x {base['arm']}'s trainable parameters ({p:,} vs {q:,})."


def agreement(verdict: dict | None, arm: str, paper_direction: str) -> str:
    """``agrees`` | ``disagrees`` | ``within noise`` (| ``not evaluated``) for the paper's direction of ``arm``."""
    if verdict is None:
        return "not evaluated"
    if verdict.get("degenerate"):
        return "no verdict (degenerate)"
    if not verdict["outside_noise"]:
        return "within noise"
    ours = "better" if verdict["better"] == arm else "worse"
    if not paper_direction:
        return f"no claim (ours: {ours})"
    return "agrees" if ours == paper_direction else "disagrees"


def top_sentence(table: dict) -> str:
    m = table["primary_metric"]
    base = next((r for r in table["rows"] if r.get("baseline")), None)
    parts = [r["verdicts"][m]["sentence"] + size_note(r, base) for r in table["rows"] if m and m in r["verdicts"]]
    flags = "".join(f"Caution, {f}. " for f in table.get("flags", ()))
    if not parts:
        return flags + "No verdict: " + ("not every arm has an evaluation with the same settings." if m else
                                         "no arm has an evaluation with a primary metric.")
    return flags + " ".join(parts)


def verdict_cell(v: dict | None) -> str:
    """A verdict in a table cell: ``X better`` / ``within noise`` / ``no verdict (degenerate)`` / ``-``."""
    if v is None:
        return "-"
    if v.get("degenerate"):
        return "no verdict (degenerate)"
    return f"{v['better']} better" if v["outside_noise"] else "within noise"


def what_this_shows(table: dict, settings: dict | None, records: dict[str, dict | None]) -> str:
    """The 'what this shows and what it does not' paragraph."""
    if settings is None:
        return "Nothing is shown about sample quality: no run has an evaluation."
    rows = table["rows"]
    seeds = ", ".join(f"{r['arm']} {r['n']}" + (f" of {r['n_runs']}" if r["n"] != r["n_runs"] else "") for r in rows)
    steps = sorted({s for r in rows for s in r["steps"] if s is not None})
    methods = sorted({s["method"] for r in rows for s in r["metrics"].values()})
    recs = [r for r in records.values() if r]
    chosen = any((r.get("selection") or {}).get("cfg_chosen_on_these_samples") or
                 (r.get("selection") or {}).get("ema_chosen_on_these_samples") for r in recs)
    floor = [r["metrics"].get("fd_classifier_real_train") for r in recs if r["metrics"].get("fd_classifier_real_train")]
    text = [f"What this shows: per arm, the mean of each metric over its evaluated training seeds ({seeds}), each "
            f"run evaluated on {settings['num_images']} generated samples ({describe(settings)}); intervals: "
            f"{'; '.join(methods)}. A difference is outside the noise when the 95 % interval of the difference "
            "excludes 0."]
    no = []
    if any(r["n"] < 2 for r in rows):
        no.append("with 1 seed an arm's interval covers only the sampling noise of its samples, not the "
                  "seed-to-seed spread, which dominates")
    no.append("'within noise' is not evidence that the arms are equal, only that these seeds and samples cannot "
              "tell them apart")
    if settings.get("metric_kind") == "classifier":
        no.append("the metric is a Fréchet distance in a small classifier's feature space, not FID, and is not "
                  "comparable with the paper's numbers" + (f" (real train images reach {min(floor):.3g} at this "
                                                          "sample count)" if floor else ""))
    if steps:
        no.append(f"the runs were trained for {steps[0]}" + (f"-{steps[-1]}" if len(steps) > 1 else "") +
                  " steps, a small budget: a result here need not hold at the paper's budget")
    if chosen:
        no.append("the cfg / EMA weights were chosen on these same samples, which favours the arm they were tuned on")
    no.append("metrics and arms are not corrected for multiple comparisons")
    return " ".join(text) + " What it does not show: " + "; ".join(no) + "."


def interval_text(s: dict) -> str:
    """``[lo, hi]`` of a summary with an interval, ``-`` without one."""
    if s.get("lo") is None:
        return "-"
    return f"[{s['lo']:.4g}, {s['hi']:.4g}]"


def arms_markdown(table: dict, sentence: str, paragraph: str, settings: dict | None, title: str) -> str:
    m = table["primary_metric"]
    paper = any("paper" in r for r in table["rows"])
    lines = [f"# {title}", "", sentence, ""]
    head = ["arm", "seeds"] + [f"{LABELS[k]} ({'lower' if LOWER_IS_BETTER[k] else 'higher'} is better)"
                               for k in table["metrics"]] + ["vs baseline"] + (["paper", "ours"] if paper else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        cells = [r["arm"] + (" (baseline)" if r["baseline"] else ""),
                 f"{r['n']}" + (f" of {r['n_runs']}" if r["n"] != r["n_runs"] else "")]
        for k in table["metrics"]:
            s = r["metrics"].get(k)
            cells.append(f"{s['mean']:.4g} {interval_text(s)}" if s else "-")
        v = r["verdicts"].get(m)
        cells.append(verdict_cell(v) + (f" ({v['diff']:+.3g}, [{v['lo']:.3g}, {v['hi']:.3g}])"
                                         if v and v["lo"] is not None else ""))
        if paper:
            cells += [r.get("paper") or "(no claim)", r.get("ours", "-")] if not r["baseline"] else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Evaluation: {describe(settings)}." if settings else "No evaluation.",
              "Intervals: 95 %; per-arm method in arms.json (t over seeds; one seed: bootstrap over samples).",
              "", paragraph, ""]
    return "\n".join(lines)
