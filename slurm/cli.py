"""`jit slurm ...`: submit a run (or a sweep) with the same options as `jit train`, and watch it.

Registered as ``jit slurm`` through the ``jit_core.commands`` entry point (pyproject.toml): jit_core does not import it.
"""
from __future__ import annotations

import functools
import json
import shlex
import time
from pathlib import Path

import click

from jit_core.cli import build_config, run_options
from jit_core.config import flatten

from .memory import plan_memory
from .options import (
    DEFAULT_MAX_REQUEUES,
    DEFAULT_SIGNAL_DELAY_S,
    DEFAULT_TIME_MIN,
    EXECUTORS,
    LaunchError,
    parse_sbatch_flags,
    resolve_options,
)
from .outcome import debug_result, wait_for_end
from .profiles import REPO_PROFILES, ProfileError, available_profiles, load_profile
from .records import log_folder
from .run_checks import run_warnings
from .runs import differing_keys, plan_runs
from .submit import preflight, sbatch_script, submit
from .watch import cancel, find_run, format_status, is_terminal, job_state, log_files, queue, run_status


def _friendly(fn):
    """LaunchError / ProfileError -> one clear line (click.ClickException)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (LaunchError, ProfileError) as exc:
            raise click.ClickException(str(exc)) from exc
    return wrapper


@click.group("slurm")
def slurm_group() -> None:
    """Train on SLURM (or local subprocesses) with the same run options as `jit train`.

    \b
    jit train --preset tiny --run-dir runs/tiny                        # laptop
    jit slurm submit --preset tiny --run-dir runs/tiny --executor local
    jit slurm submit --profile mycluster --nodes 2 --gpus-per-node 8 \\
        --preset jit-b16 --run-dir /shared/runs/b16 data.path=/data/imagenet
    jit slurm status /shared/runs/b16 ; jit slurm logs /shared/runs/b16 --follow
    """


# ------------------------------------------------------------------------------------------------ submit
def cluster_options(fn):
    """Where and how jobs run (profile, executor, resources, requeues); shared by `submit` and `study`."""
    options = [
        click.option("--profile", help="Cluster profile: ~/.config/jit-vco/clusters/NAME.toml or slurm/profiles/NAME.toml."),
        click.option("--executor", type=click.Choice(EXECUTORS),
                      help="slurm (default), local (subprocesses here) or debug (in this process)."),
        click.option("--nodes", type=int, help="Nodes (default 1)."),
        click.option("--gpus-per-node", type=int, help="GPUs per node; one task per GPU. 0: a CPU job."),
        click.option("--tasks-per-node", type=int, help="Tasks per node of a CPU job (--gpus-per-node 0); default 1."),
        click.option("--cpus-per-task", type=int, help="CPU cores per task."),
        click.option("--mem-per-task", type=float, help="Memory per task in GB (default: an estimate from the run's model "
                      "and data, at least 2 GB per CPU task / 8 GB per GPU task; a lower request is warned about)."),
        click.option("--partition", help="SLURM partition."),
        click.option("--account", help="SLURM account."),
        click.option("--qos", help="SLURM quality of service."),
        click.option("--time", "time_limit", help=f"Time limit per job: minutes or HH:MM:SS (default {DEFAULT_TIME_MIN} min); "
                      "the job requeues itself at the limit and resumes."),
        click.option("--constraint", help="SLURM node constraint (features), e.g. h100."),
        click.option("--sbatch", "sbatch_flags", multiple=True, metavar="KEY=VALUE",
                      help="Extra sbatch flag, repeatable: --sbatch mail-type=END --sbatch exclusive="),
        click.option("--job-name", help="Job name (default jit-<run folder name>)."),
        click.option("--max-requeues", type=int,
                     help=f"Times the job may requeue at its time limit (default {DEFAULT_MAX_REQUEUES})."),
        click.option("--signal-delay", "signal_delay_s", type=int,
                      help=f"Seconds before the time limit at which the job requeues (default {DEFAULT_SIGNAL_DELAY_S})."),
        click.option("--allow-local-run-dir", is_flag=True, default=None,
                      help="Accept a run folder that looks node-local for a multi-node job."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def cluster(params: dict):
    """The resolved cluster options from the command's parameters (profile first, then the flags given)."""
    given = {"executor": params["executor"], "nodes": params["nodes"], "gpus_per_node": params["gpus_per_node"],
             "tasks_per_node": params["tasks_per_node"], "cpus_per_task": params["cpus_per_task"],
             "mem_per_task": params["mem_per_task"], "partition": params["partition"], "account": params["account"],
             "qos": params["qos"], "time": params["time_limit"], "constraint": params["constraint"],
             "job_name": params["job_name"], "max_requeues": params["max_requeues"],
             "signal_delay_s": params["signal_delay_s"], "allow_local_run_dir": params["allow_local_run_dir"],
             "sbatch": parse_sbatch_flags(params["sbatch_flags"])}
    profile = params["profile"]
    return resolve_options(load_profile(profile) if profile else {}, given, profile)


@slurm_group.command("submit")
@run_options
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Run folder (resumed if it holds this run); a sweep's runs go to RUN_DIR/KEY=VALUE.")
@cluster_options
@click.option("--sweep", multiple=True, metavar="KEY=V1,V2,...",
              help="A job array, one run per value (repeatable: all combinations), e.g. --sweep plugins=none,vco. "
              "A sweep value wins over --preset/--config/overrides/--plugin; a plugin's options go to the elements "
              "that enable it.")
@click.option("--dry-run", is_flag=True, help="Print the sbatch script, the run config(s) and how a sweep's runs differ, "
              "and every problem submitting would refuse; submit nothing.")
@click.option("--wait", is_flag=True, help="Block until the job(s) end and print the result.")
@_friendly
def submit_cmd(preset, config_file, plugins, overrides, run_dir, sweep, dry_run, wait, **cluster_params):
    """Submit a training run. OVERRIDES are KEY=VALUE, as for `jit train`.

    \b
    jit slurm submit --preset jit-b16 --run-dir /shared/runs/b16 --profile mycluster --nodes 2 --gpus-per-node 8
    jit slurm submit --preset vco-b16 --run-dir /shared/runs/pair --sweep plugins=none,vco --profile mycluster \\
        data.path=/shared/imagenet vco.encoder_weights=/shared/dinov2.safetensors
    """
    opts = cluster(cluster_params)
    if not run_dir:
        run_dir = build_config(preset, config_file, plugins, overrides).run_dir
    if not run_dir:
        raise LaunchError("no run folder: pass --run-dir DIR (or set run_dir in the config)")
    root = Path(run_dir).expanduser().absolute()

    def build(folder):
        return build_config(preset, config_file, plugins, overrides, folder)

    runs = plan_runs(build, root, sweep)
    opts, mem_warnings = plan_memory(runs, opts)
    warnings = [note for run in runs for note in run.notes] + mem_warnings
    warnings += [w for run in runs for w in run_warnings(run)]
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if dry_run:
        _print_dry_run(runs, opts, root)
        return
    if opts.executor == "debug":
        wait = True  # an in-process job runs when its result is asked for
    submission = submit(runs, opts, root, command_line=_command_line(click.get_current_context()))
    shape = f"{opts.nodes} node{'s' if opts.nodes > 1 else ''} x {opts.ntasks_per_node} task" \
            f"{'s' if opts.ntasks_per_node > 1 else ''}"
    if len(runs) > 1:
        as_job = f" as job {submission.jobs[0].job_id.split('_')[0]}" if opts.executor == "slurm" else ""
        click.echo(f"submitted {len(runs)} runs{as_job} ({opts.executor}, each {shape}) in {root}:")
        for run, job in zip(runs, submission.jobs):
            click.echo(f"  {job.job_id}  {run.run_dir}")
    else:
        click.echo(f"submitted job {submission.jobs[0].job_id} ({opts.executor}, {shape}) for {runs[0].run_dir}")
    if not wait:
        click.echo(f"watch: jit slurm status {root} | logs: jit slurm logs "
                   f"{runs[0].run_dir} --follow | stop: jit slurm cancel {root}")
        return
    failures = []
    for run, job in zip(runs, submission.jobs):
        try:
            end = debug_result(job) if opts.executor == "debug" else wait_for_end(job.job_id, opts.executor,
                                                                                  run.run_dir)
        except LaunchError as exc:
            failures.append(str(exc))
            if len(runs) > 1:   # one run: the error below says it
                click.echo(f"{run.run_dir}: {exc}", err=True)
            continue
        losses = ", ".join(f"{k}={v:.4f}" for k, v in sorted((end.get("losses") or {}).items()))
        click.echo(f"{run.run_dir}: {end['status']} at step {end['step']}: {losses}")
    if failures:
        raise LaunchError(failures[0] if len(failures) == 1 else f"{len(failures)} of {len(runs)} jobs failed")


def _command_line(ctx: click.Context) -> str:
    """The submit command as given (options in long form), for the run folder's job records."""
    parts = ["jit", "slurm", ctx.info_name or "submit"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument) or value in (None, (), False):
            continue
        opt = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            parts.append(opt)
        elif getattr(param, "multiple", False):
            for item in value:
                parts += [opt, str(item)]
        else:
            parts += [opt, str(value)]
    return shlex.join(parts + list(ctx.params.get("overrides") or ()))


def _print_dry_run(runs, opts, root: Path) -> None:
    if opts.executor == "slurm":
        click.echo(f"# sbatch script for {root} (dry run: nothing submitted)")
        click.echo(sbatch_script(opts, root, array_size=len(runs) if len(runs) > 1 else None))
    else:
        click.echo(f"# {opts.executor} executor: {opts.ntasks_per_node} task(s) on this machine, "
                   f"time limit {opts.time_min} min, logs in {log_folder(root)} (dry run: nothing started)")
    if len(runs) > 1:
        keys = differing_keys(runs)
        click.echo(f"# {len(runs)} runs; they differ in {len(keys)} key{'s' if len(keys) != 1 else ''}:")
        for run in runs:
            flat = flatten(run.config, without=("run_dir",))
            unset = dict.fromkeys(k.split(".")[0] + ".*" for k in keys if k not in flat)   # a plugin not enabled
            shown = [f"{k}={json.dumps(flat[k])}" for k in keys if k in flat] + [f"{k} unset" for k in unset]
            click.echo(f"#   {run.label}: {', '.join(shown)}")
    for index, run in enumerate(runs):
        head = f"array element {index}: " if len(runs) > 1 else ""
        click.echo(f"# {head}run config for {run.run_dir}")
        click.echo(run.config.to_json())
    for problem in preflight(runs, opts, root):
        click.echo(f"warning: submitting would fail: {problem}", err=True)


# ------------------------------------------------------------------------------------------------ study
@slurm_group.command("study")
@click.argument("name")
@click.argument("overrides", nargs=-1)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Study folder on shared storage (runs in OUT/<arm>/seed-<n>).")
@click.option("--seeds", help="Comma-separated seeds (default: the study's).")
@click.option("--arms", help="Comma-separated arm names (default: all).")
@click.option("--num-images", type=int, help="Images generated per evaluation (default: the study's).")
@click.option("--ref-stats", type=click.Path(exists=True, dir_okay=False), help="FID reference statistics (npz).")
@click.option("--inception-weights", type=click.Path(exists=True, dir_okay=False), help="FID Inception weights.")
@cluster_options
@click.option("--dry-run", is_flag=True, help="Check every arm, print what each changes and the sbatch script.")
@_friendly
def study_cmd(name, overrides, out, seeds, arms, num_images, ref_stats, inception_weights, dry_run, **cluster_params):
    """Submit a named study (`jit study --list`) as one job array: every (arm, seed) trains, then evaluates.

    \b
    jit slurm study vco-b16 --out /shared/studies/vco-b16 --profile mycluster --nodes 2 --gpus-per-node 8 \\
        data.path=/shared/imagenet vco.encoder_weights=/shared/dinov2.safetensors --ref-stats /shared/in256.npz
    jit study vco-b16 --out /shared/studies/vco-b16 --report-only      # once the jobs have ended
    """
    from jit_core.study import expand
    from jit_core.study.command import describe, parse_list
    from jit_core.study.registry import get_study

    from .runs import RunSpec
    study = get_study(name)
    root = Path(out).expanduser().absolute()
    elements = expand(study, root, seeds=parse_list(seeds, int), arms=parse_list(arms), overrides=overrides)
    runs = [RunSpec(e.config, e.run_dir, f"{e.arm.slug}/seed-{e.seed}", e.notes) for e in elements]
    opts, mem_warnings = plan_memory(runs, cluster(cluster_params))
    for warning in [n for r in runs for n in r.notes] + mem_warnings + [w for r in runs for w in run_warnings(r)]:
        click.echo(f"warning: {warning}", err=True)
    if dry_run:
        click.echo(describe(study, elements))
        _print_dry_run(runs, opts, root)
        return
    evaluate = {"num_images": num_images or study.num_images, "save": "none", "ref_stats": ref_stats,
                "inception_weights": inception_weights}
    submission = submit(runs, opts, root, command_line=_command_line(click.get_current_context()), evaluate=evaluate)
    click.echo(f"submitted study {name}: {len(runs)} runs ({opts.executor}) in {root}:")
    for run, job in zip(runs, submission.jobs):
        click.echo(f"  {job.job_id}  {run.run_dir}")
    click.echo(f"watch: jit slurm status {root} | report once they end: jit study {name} --out {root} --report-only")


# ------------------------------------------------------------------------------------------------ watching
@slurm_group.command("status")
@click.argument("target", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_friendly
def status_cmd(target, as_json):
    """State (a pending job: why), requeues, elapsed and CPU time over all attempts, peak memory, the step a
    resume starts from (newest verified checkpoint) and the last loss of a run (RUN_DIR or JOB_ID; a sweep
    folder: every run). Reads sacct and the run folder's JSON files only (never its pickles).

    Without TARGET: your queued and running jobs (squeue).
    """
    if not target:
        click.echo(queue())
        return
    info = run_status(find_run(target))
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(format_status(info))


@slurm_group.command("logs")
@click.argument("target")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
@click.option("--lines", "-n", default=40, show_default=True, help="Lines of each log to show first.")
@click.option("--task", default=0, show_default=True, help="Task (rank) whose logs to show.")
@_friendly
def logs_cmd(target, follow, lines, task):
    """submitit's stdout and stderr of a run's latest job (RUN_DIR or JOB_ID)."""
    run_dir = find_run(target)
    record, out_path, err_path = log_files(run_dir, task)
    job_id, executor = record["job_id"], record.get("executor", "slurm")
    click.echo(f"# job {job_id} ({executor}), logs in {out_path.parent}")
    positions = {}
    for path, err in ((out_path, False), (err_path, True)):
        text = path.read_text(errors="replace") if path.exists() else ""
        positions[path] = len(text.encode())
        tail = "\n".join(text.replace("\r", "\n").splitlines()[-lines:])
        click.echo(f"==> {path.name} <==")
        if tail:
            click.echo(tail)
    if not follow:
        return
    if executor == "debug":
        raise LaunchError("a debug-executor job runs in the submitting process: there is nothing to follow")
    last_check, ended = 0.0, False
    while True:
        for path, err in ((out_path, False), (err_path, True)):
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(positions.get(path, 0))
                chunk = f.read()
            if chunk:
                positions[path] = positions.get(path, 0) + len(chunk)
                click.echo(chunk.decode(errors="replace"), nl=False, err=err)
        if ended:
            break
        if time.monotonic() - last_check > 2:
            last_check = time.monotonic()
            state = job_state(job_id, executor, run_dir)
            if is_terminal(state):
                ended = True   # one more read for what was written last
                click.echo(f"\n# job {job_id} ended: {state}", err=True)
                continue
        time.sleep(1)


@slurm_group.command("cancel")
@click.argument("target")
@_friendly
def cancel_cmd(target):
    """Cancel a run's jobs (RUN_DIR; a sweep folder: the whole array) or one JOB_ID.

    The trainer gets SIGTERM first and writes a checkpoint if it can; resubmit the same command to resume.
    """
    for job_id, outcome in cancel(target):
        click.echo(f"{job_id}: {outcome}")


@slurm_group.command("profiles")
def profiles_cmd():
    """List the cluster profiles `--profile NAME` can use."""
    found = available_profiles()
    if not found:
        click.echo(f"no cluster profiles; see the example {REPO_PROFILES / 'example.toml'}")
    for name, path in sorted(found.items()):
        try:
            desc = load_profile(str(path)).get("description", "")
        except ProfileError as exc:
            desc = f"(broken: {exc})"
        click.echo(f"{name:16} {path}\n{'':16} {desc}".rstrip())
