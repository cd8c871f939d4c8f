"""``jit study NAME``: train and evaluate a study's arms x seeds here, then write its report.

Runs are in ``OUT/<arm>/seed-<n>``; the report in ``OUT/report`` (``index.html``, ``metrics.md``,
``arms.json`` by :func:`jit_core.eval.report.compare_arms`) and ``OUT/study.md`` (the arms, what each
changes, the paper's direction and the measured times). On a cluster: ``jit slurm study NAME``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from jit_core import durable

from .spec import Element, Study, StudyError, config_changes, expand


def parse_list(text: str | None, cast=str) -> list | None:
    if not text:
        return None
    try:
        return [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise StudyError(f"bad list {text!r}: use comma-separated values, e.g. 0,1,2") from None


def describe(study: Study, elements: list[Element]) -> str:
    """The dry run's table: each arm, its ingredient, the config keys it changes and the paper's direction."""
    configs = {e.arm.name: e.config for e in elements}
    budgets = {(e.config["train"]["max_steps"], e.config["train"]["epochs"], e.config["optim"]["batch_size"])
               for e in elements}
    budget = ", ".join(f"{s} steps of {b} images" if s is not None else f"{n} epochs of {b} images per step"
                       for s, n, b in sorted(budgets, key=str))
    lines = [f"study {study.name}: {study.description}", f"baseline: {study.baseline}; "
             f"{len({e.arm.name for e in elements})} arms x {len({e.seed for e in elements})} seeds = "
             f"{len(elements)} runs; budget per run: {budget}", ""]
    for arm in dict.fromkeys(e.arm for e in elements):
        changed = (", ".join(config_changes(configs[arm.reference], configs[arm.name]))
                   if arm.reference in configs else "-")
        paper = f"paper: {arm.paper} than {study.baseline}" if arm.paper else "paper: no claim"
        lines.append(f"  {arm.name:<28} {arm.ingredient or 'reference arm':<34} changes: {changed}  [{paper}]")
    notes = sorted({n for e in elements for n in e.notes})
    return "\n".join(lines + [f"note: {n}" for n in notes])


def study_markdown(study: Study, elements: list[Element], records: dict, wall_s: float | None, report: dict) -> str:
    rows = ["| arm | ingredient | paper vs " + study.baseline + " | paper's figures | train s / run | eval s / run |",
            "|---|---|---|---|---|---|"]
    for arm in dict.fromkeys(e.arm for e in elements):
        recs = [records[e.run_dir] for e in elements if e.arm == arm and e.run_dir in records]
        train = sum(r["train_s"] for r in recs) / len(recs) if recs else float("nan")
        ev = sum(r["eval_s"] for r in recs) / len(recs) if recs else float("nan")
        rows.append(f"| {arm.name} | {arm.ingredient or 'reference'} | {arm.paper or 'no claim'} | "
                    f"{arm.paper_note or '-'} | {train:.0f} | {ev:.0f} |")
    total = sum(r["train_s"] + r["eval_s"] for r in records.values())
    timing = (f"Wall time of this invocation: {wall_s / 60:.1f} min; " if wall_s else "") + \
             f"sum of run times {total / 60:.1f} min."
    head = report.get("sentence", "")
    return "\n".join([f"# Study {study.name}", "", study.description, "", f"**{head}**" if head else "", "",
                      *rows, "", timing, "", study.what_it_shows, "",
                      "Report with intervals, curves and same-seed samples: [report/index.html](report/index.html)", ""])


def study_report(study: Study, elements: list[Element], out: Path, wall_s: float | None = None) -> dict:
    """Compare the arms (seeds pooled per arm) against the baseline; write ``OUT/report`` and ``OUT/study.md``."""
    from jit_core.eval.report import compare_arms

    from .local import done_record
    records = {e.run_dir: r for e in elements if (r := done_record(e))}
    missing = [e.label for e in elements if e.run_dir not in records]
    if missing:
        raise StudyError(f"{len(missing)} run(s) not finished ({', '.join(missing[:3])}...): run `jit study "
                         f"{study.name} --out {out}` again (it resumes)")
    previous = out / "study.json"
    if wall_s is None and previous.is_file():      # --report-only: keep the wall time the runs were measured with
        try:
            wall_s = json.loads(previous.read_text()).get("wall_s")
        except (ValueError, AttributeError, RecursionError):    # only a timing: a damaged file loses just that
            wall_s = None
        wall_s = wall_s if isinstance(wall_s, (int, float)) else None
    arms: dict[str, list[Path]] = {}
    for e in elements:
        arms.setdefault(e.arm.name, []).append(e.run_dir)
    baseline = study.baseline if study.baseline in arms else next(iter(arms))
    report = compare_arms(arms, out / "report", baseline=baseline, paper={a: study.arm(a).paper for a in arms},
                          title=f"jit study {study.name}")
    durable.write_text(out / "study.md", study_markdown(study, elements, records, wall_s, report))
    summary = {"study": study.name, "baseline": baseline, "wall_s": wall_s,
               "runs": [{**records[e.run_dir], "run_dir": durable.stored_path(e.run_dir, out)} for e in elements],
               "report": {k: v for k, v in report.items() if isinstance(v, (str, int, float, list, dict))}}
    durable.write_json(out / "study.json", summary, default=str)
    return report


def study_command():
    """The ``jit study`` click command."""

    @click.command("study")
    @click.argument("name", required=False)
    @click.argument("overrides", nargs=-1)
    @click.option("--out", type=click.Path(file_okay=False),
                  help="Study folder (default runs/study-NAME, runs/study-NAME-quick with --quick).")
    @click.option("--quick", is_flag=True, help="The study's shorter budget, for a first look (its own default folder).")
    @click.option("--seeds", help="Comma-separated seeds (default: the study's).")
    @click.option("--arms", help="Comma-separated arm names (default: all).")
    @click.option("--lanes", default=2, show_default=True, help="Runs at a time (each gets cores / lanes threads).")
    @click.option("--num-images", type=int, help="Images generated per evaluation (default: the study's).")
    @click.option("--list", "list_", is_flag=True, help="List the installed studies and exit.")
    @click.option("--dry-run", is_flag=True, help="Resolve and check every arm, print what each changes; run nothing.")
    @click.option("--report-only", is_flag=True, help="Only (re)write the report from the finished runs.")
    def cmd(name, overrides, out, quick, seeds, arms, lanes, num_images, list_, dry_run, report_only):
        """Train and evaluate a named study's arms x seeds, then report them with intervals.

        OVERRIDES (KEY=VALUE) apply to every arm (a plugin's options only to arms enabling it).

        \b
        jit study --list
        jit study vco-tiny-pair                       # JiT vs V-Co on the embedded data (the demo)
        jit study vco-tiny --seeds 0,1,2              # V-Co's ablations, 3 seeds
        jit study vco-tiny --quick                    # the same at the study's shorter budget: a first look
        """
        from .local import StudyInterrupted, run_local
        from .registry import available_studies, get_study
        if list_ or not name:
            for key, st in sorted(available_studies().items()):
                click.echo(f"{key:<16} {len(st.arms)} arms x {len(st.seeds)} seeds  {st.description}")
            return
        study = get_study(name)
        out_dir = Path(out or f"runs/study-{name}" + ("-quick" if quick else ""))
        elements = expand(study, out_dir, seeds=parse_list(seeds, int), arms=parse_list(arms),
                          overrides=overrides, quick=quick)
        for note in sorted({n for e in elements for n in e.notes}):
            click.echo(f"note: {note}", err=True)
        if dry_run:
            click.echo(describe(study, elements))
            return
        wall = None
        if not report_only:
            t0 = time.perf_counter()
            try:
                run_local(elements, study, num_images=num_images or study.num_images, lanes=lanes, echo=click.echo)
            except StudyInterrupted as e:      # the runs checkpointed and exited: a shell sees the signal
                click.echo(f"Error: {e}", err=True)
                click.get_current_context().exit(128 + e.signum)
            wall = round(time.perf_counter() - t0, 1)
        report = study_report(study, elements, out_dir.expanduser().absolute(), wall)
        if report.get("sentence"):
            click.echo(report["sentence"])
        click.echo(f"study report: {out_dir / 'study.md'} and {out_dir / 'report' / 'index.html'}")

    return cmd
