"""``jit study`` owns its children, for real: SIGTERM to the study stops every ``jit train`` lane (each writes a
checkpoint) before the study exits; after kill -9 of the study the children notice and stop; no orphan is left in
the process table, and a re-run resumes each run from its checkpoint and finishes it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .fault_tools import folder_overrides, subprocess_env, wait_for

STEPS = 120          # more than the few steps the lanes make before they are stopped

DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from jit_core.study.local import StudyInterrupted, run_local
    from jit_core.study.spec import Arm, Study, expand
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    study = Study("procs", "", (Arm("JiT", "test", overrides=tuple(overrides)),), baseline="JiT", seeds=(0, 1),
                  eval_args=("--metrics", "none"))
    try:
        run_local(expand(study, out), study, num_images=4, lanes=2)
    except StudyInterrupted as e:
        print(e, flush=True)
        sys.exit(128 + e.signum)
""")


def _pids_using(out: Path) -> list[int]:
    """Processes of ``python -m jit_core`` whose command line names the study folder (jit train / jit evaluate)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(out) in cmdline and "-m jit_core " in cmdline:
                found.append(int(entry.name))
    return found


def _step_of(run: Path) -> int | None:
    latest = run / "checkpoints" / "latest"
    return int(latest.read_text().strip().split("-")[1]) if latest.is_file() else None


def _logged(run: Path) -> bool:
    log = run / "metrics.jsonl"
    return log.is_file() and log.stat().st_size > 0


def _start(tmp_path: Path, out: Path) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    # one data-loader worker per lane: a stopped trainer must shut it down itself (it is not signalled)
    overrides = folder_overrides(STEPS, train__ckpt_every=STEPS, train__log_every=1, data__num_workers=1)
    return subprocess.Popen([sys.executable, str(driver), str(out), *overrides], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _stop(tmp_path: Path, out: Path, runs: list[Path], how: int, after: list[int]) -> tuple[str, list[int]]:
    """Start the study, let every lane train past step ``after[i]``, send ``how`` to the study; returns its output and
    the step each run checkpointed when it stopped. Asserts that no lane outlives the study for long."""
    study = _start(tmp_path, out)
    try:
        def past(run, step):
            log = run / "metrics.jsonl"
            return log.is_file() and any(json.loads(line)["step"] > step for line in log.read_text().splitlines()[-1:])
        assert wait_for(lambda: all(past(r, s) for r, s in zip(runs, after)), 300, 0.1, study), \
            study.communicate()[0]
        assert len(_pids_using(out)) >= 2          # two lanes (and their data-loader workers)
        os.kill(study.pid, how)
        output = study.communicate(timeout=120)[0]
        # the lanes stop on their own: the signal passed on by the study, or their parent seen gone after kill -9
        assert wait_for(lambda: not _pids_using(out), 120, 0.1), _pids_using(out)
    finally:
        for pid in _pids_using(out):       # never leave a process behind, even when the test fails
            os.kill(pid, signal.SIGKILL)
        if study.poll() is None:
            study.kill()
    steps = [_step_of(r) for r in runs]
    assert all(s is not None and a < s < STEPS for s, a in zip(steps, after)), (steps, output)
    assert not any((r / "study-element.json").exists() for r in runs)
    if how == signal.SIGTERM:
        assert study.returncode == 128 + signal.SIGTERM, output
        assert "stopped by SIGTERM" in output and "run the same command again to resume" in output
    return output, steps


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process table from /proc")
def test_a_stopped_study_leaves_no_orphan_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "study"
    runs = [out / "JiT" / "seed-0", out / "JiT" / "seed-1"]
    _, first = _stop(tmp_path, out, runs, signal.SIGTERM, [0, 0])      # each lane checkpoints where it stopped
    _, second = _stop(tmp_path, out, runs, signal.SIGKILL, first)      # the re-run resumed and went further
    rerun = _start(tmp_path, out)
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output
    for run, step in zip(runs, second):
        train_log = run.with_name(f"{run.name}.train.log").read_text()
        for s in (first[runs.index(run)], step):
            assert f"resumed from {run / 'checkpoints' / f'step-{s:08d}'} (step {s})" in train_log
        assert "in use by another" not in train_log
        assert _step_of(run) == STEPS and json.loads((run / "study-element.json").read_text())["seed"] in (0, 1)
    assert not _pids_using(out)


def test_a_lane_has_its_own_process_group_and_a_second_signal_kills_it():
    from jit_core.study.local import Children
    children = Children()
    ignore_term = ("import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print(os.environ['JIT_STUDY_PARENT_PID'], flush=True); time.sleep(60)")
    proc = children.start([sys.executable, "-c", ignore_term], env=dict(os.environ), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == str(os.getpid())    # it knows whose death to watch for
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)     # its own group: a terminal's Ctrl-C skips it
        children.stop(signal.SIGTERM)                                 # passed on; this child ignores it
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
        children.stop(signal.SIGTERM)                                 # the second signal: SIGKILL to its group
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.communicate()


def test_jit_study_exits_with_the_signal_after_its_runs_stopped(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import jit_core.cli as jit_cli
    from jit_core.study import local

    def stopped(*args, **kwargs):
        raise local.StudyInterrupted("study vco-tiny-pair stopped by SIGTERM: ...; run the same command again to "
                                     "resume", signal.SIGTERM)
    monkeypatch.setattr(local, "run_local", stopped)
    jit_cli._add_optional_commands()
    res = CliRunner().invoke(jit_cli.cli, ["study", "vco-tiny-pair", "--out", str(tmp_path / "s")])
    assert res.exit_code == 128 + signal.SIGTERM, res.output
    assert res.stderr.strip() == ("Error: study vco-tiny-pair stopped by SIGTERM: ...; run the same command again "
                                  "to resume")
    assert not (tmp_path / "s" / "report").exists()       # no report of a study that did not finish
