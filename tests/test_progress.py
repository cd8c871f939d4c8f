"""Progress that suits its terminal: plain lines (no carriage returns) in files and pipes, a bar on a TTY,
and a 30-step `jit train` logged to a file holding one progress line per log interval."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jit_core.progress import Progress, heartbeat, track

ROOT = Path(__file__).resolve().parents[1]


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_on_a_file_at_each_report_and_no_carriage_return(monkeypatch):
    monkeypatch.delenv("JIT_PROGRESS", raising=False)
    out = io.StringIO()
    with Progress(30, "run", "step", stream=out, every_s=None, rate_unit="img", rate_scale=8) as p:
        for step in range(1, 31):
            p.update(1)
            if step % 10 == 0:
                p.report(loss=0.5 / step, lr=1e-4)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [re.search(r"step (\d+)/30", line)[1] for line in lines] == ["10", "20", "30"]
    assert all("loss" in line and "img/s" in line and "ETA" in line for line in lines), lines
    assert lines[-1].endswith("ETA 0:00:00")


def test_plain_lines_every_n_updates_or_seconds(monkeypatch):
    monkeypatch.delenv("JIT_PROGRESS", raising=False)
    out = io.StringIO()
    for _ in track(range(7), desc="sampling", unit="batch", stream=out, every_steps=3, every_s=None):
        pass
    assert [line.split(": ")[1].split("  ")[0] for line in out.getvalue().splitlines()] == \
        ["batch 3/7 (43%)", "batch 6/7 (86%)", "batch 7/7 (100%)"]
    out = io.StringIO()
    with Progress(None, "wait", stream=out, every_s=0.0) as p:    # every update is overdue: one line each
        p.update(1)
        p.update(1)
    assert len(out.getvalue().splitlines()) == 2 and "ETA" not in out.getvalue()


def test_a_tty_gets_the_live_bar(monkeypatch):
    monkeypatch.delenv("JIT_PROGRESS", raising=False)
    tty = FakeTTY()
    with Progress(5, "run", "step", stream=tty) as p:
        for _ in range(5):
            p.update(1)
        p.report(loss=0.25)
    assert "\r" in tty.getvalue() and "5/5" in tty.getvalue()
    monkeypatch.setenv("JIT_PROGRESS", "plain")                   # forced plain even on a terminal
    tty = FakeTTY()
    with Progress(5, "run", stream=tty, every_s=None) as p:
        p.update(5)
        p.report()
    assert "\r" not in tty.getvalue() and len(tty.getvalue().splitlines()) == 1


def test_heartbeat_beats_while_the_block_runs():
    beats = []
    with heartbeat(lambda: "still going", every_s=0.05, emit=beats.append):
        time.sleep(0.3)
    assert 2 <= len(beats) and set(beats) == {"still going"}


@pytest.mark.slow      # ~16-25 s on the loaded 2-core machine, mostly the child's start-up
def test_30_step_training_logged_to_a_file_has_one_line_per_log_interval(tmp_path):
    log = tmp_path / "train.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("JIT_PROGRESS", None)
    with open(log, "w") as f:     # stdout and stderr to a file, as a SLURM log
        done = subprocess.run([sys.executable, "-m", "jit_core", "train", "--preset", "test", "--run-dir",
                               str(tmp_path / "run"), "train.max_steps=30", "train.log_every=10",
                               "train.ckpt_every=30", "optim.batch_size=8", "sample.steps=1"],
                              stdout=f, stderr=subprocess.STDOUT, env=env, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    progress = [line for line in text.splitlines() if re.match(r"run: step \d+/30", line)]
    assert [re.match(r"run: step (\d+)/30", line)[1] for line in progress] == ["10", "20", "30"], text
    assert all("loss" in line and "img/s" in line for line in progress), progress


def test_study_heartbeat_names_each_running_run_with_its_step_and_eta(tmp_path):
    from types import SimpleNamespace

    from jit_core.study.lanes import LaneStatus
    a = SimpleNamespace(label="JiT/seed-0", run_dir=tmp_path / "a", config={"train": {"max_steps": 150}})
    b = SimpleNamespace(label="V-Co/seed-0", run_dir=tmp_path / "b", config={"train": {"max_steps": 150}})
    a.run_dir.mkdir()
    status = LaneStatus("pair", total=6, done=2)
    status.phase(a, "training")
    status.phase(b, "evaluating")
    assert status.line().startswith("study pair: 2 of 6 done")
    assert "JiT/seed-0 starting" in status.line() and "V-Co/seed-0 evaluating for" in status.line()
    (a.run_dir / "metrics.jsonl").write_text('{"step": 10, "loss": 1.0}\n{"step": 20, "loss": 0.9}\n{"step": 3')
    line = status.line()
    assert "JiT/seed-0 training step 20/150, ETA " in line, line    # the torn last line is skipped
    status.finished(a)
    status.dropped(a)
    assert "JiT/seed-0" not in status.line() and "3 of 6 done" in status.line()


def test_slurm_submit_wait_beats_with_the_job_state_and_the_run_step(tmp_path, monkeypatch, capsys):
    import slurm.outcome as outcome
    from slurm.options import LaunchError
    (tmp_path / "metrics.jsonl").write_text('{"step": 7, "loss": 0.5}\n')
    monkeypatch.setattr(outcome, "HEARTBEAT_S", 0.2)
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])   # a "local" job: its pid
    try:
        with pytest.raises(LaunchError, match="ended without a result"):   # it writes no end event
            outcome.wait_for_end(str(job.pid), "local", tmp_path, poll_s=0.1)
    finally:
        job.wait()
    beats = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"job {job.pid}: ")]
    assert beats and all("RUNNING" in b and "waited" in b and "run at step 7" in b for b in beats), beats
