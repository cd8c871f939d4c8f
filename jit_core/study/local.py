"""Run a study's elements on this machine: ``lanes`` subprocess lanes of ``jit train`` then ``jit evaluate``.

Each lane gets ``cores / lanes`` threads (two 1-thread lanes on 2 cores trained 1.75x faster than one
2-thread run: measured, docs/embedded-comparison.md). Costlier elements start first. An element that
finished (``<run>/study-element.json``) is skipped, and an interrupted one resumes from its checkpoint
(``jit train`` resumes a folder holding its run), so re-running the command continues the study.

The study owns its children: each ``jit train`` / ``jit evaluate`` runs in its own process group (a Ctrl-C in the
terminal reaches the study only); SIGTERM or SIGINT to the study is passed on to every child (the trainer
finishes its step, writes a checkpoint and exits), no new child starts, and the study exits once they have
(:class:`StudyInterrupted`); a second signal kills the children's process groups at once. If the study itself
is killed (kill -9), each child sees its parent gone and stops the same way
(:func:`jit_core.training.signals.stop_with_parent`). Either way, re-running the command resumes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from jit_core.durable import ensure_dir, open_append, replace_durably, stored_path
from jit_core.progress import heartbeat

from .lanes import LaneStatus
from .spec import Element, Study, StudyError

DONE = "study-element.json"
PARENT_ENV = "JIT_STUDY_PARENT_PID"   # tells a child whose death to watch for (jit_core.training.signals)
HEARTBEAT_S = float(os.environ.get("JIT_HEARTBEAT_S", 30))


class StudyJobError(StudyError):
    """An element's training or evaluation failed; the message ends with the log's tail."""


class StudyInterrupted(StudyError):
    """The study was asked to stop (SIGTERM / SIGINT): its children checkpointed and exited; ``signum`` says why."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class _Stopped(Exception):
    """A lane's element was cut short because the study is stopping (not a failure of the element)."""


class Children:
    """The lanes' running children, each in its own process group; :meth:`stop` passes a signal on to all of them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.stopping: int | None = None     # the signal that stops the study

    def start(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        with self._lock:     # no child starts once the study is stopping (checked under the lock stop() takes)
            if self.stopping is not None:
                raise _Stopped
            env = {**kwargs.pop("env"), PARENT_ENV: str(os.getpid())}
            proc = subprocess.Popen(cmd, start_new_session=True, env=env, **kwargs)
            self._running.add(proc)
            return proc

    def done(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(proc)

    def stop(self, signum: int) -> None:
        """First call: pass ``signum`` on to every running child (the trainer finishes its step, checkpoints and
        exits, shutting down its own data-loader workers: they are not signalled, or their death would fail the
        step). Any later call: SIGKILL to every child's process group (abort at once; the last complete
        checkpoint is kept, as after a second Ctrl-C to ``jit train``)."""
        with self._lock:
            first, self.stopping = self.stopping is None, self.stopping or signum
            for proc in self._running:
                try:
                    if first:
                        proc.send_signal(signum)
                    else:
                        os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:   # it has just exited
                    pass


def element_cost(element: Element) -> int:
    """Relative cost used for ordering: every co-denoising plugin roughly doubles a step."""
    return 1 + 2 * len(element.config.get("plugins") or [])


# a finished element's record: the keys a reader relies on (required) and the others it may hold, with their
# types (the file is untrusted input; `jit slurm study` jobs write it too, without arm and seed)
DONE_REQUIRED = {"train_s": (int, float), "eval_s": (int, float)}
DONE_OPTIONAL = {"arm": (str,), "seed": (int,), "result": (str, type(None)), "num_images": (int, type(None)),
                 "threads": (int,)}


def done_record(element: Element) -> dict | None:
    """The element's ``study-element.json`` (None: not finished); :class:`StudyError` naming the file if it is not
    the record this module writes."""
    path = element.run_dir / DONE
    if not path.is_file():
        return None
    fix = f"delete {path} to evaluate that run again (its training is kept)"
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise StudyError(f"{path} is not valid JSON: {fix}") from None
    if not isinstance(record, dict):
        raise StudyError(f"{path} holds a {type(record).__name__}, not an object: {fix}")
    for key, types in {**DONE_REQUIRED, **DONE_OPTIONAL}.items():
        value = record.get(key)
        if key not in record and key in DONE_OPTIONAL:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            raise StudyError(f"{path}: {key!r} is {value!r}, expected {' or '.join(t.__name__ for t in types)}: {fix}")
    return record


def log_path(element: Element, what: str) -> Path:
    """``OUT/<arm>/seed-<n>.<what>.log``: beside the run folder (the trainer wants its folder to itself)."""
    return element.run_dir.with_name(f"{element.run_dir.name}.{what}.log")


def train_command(element: Element) -> list[str]:
    """``jit train`` of the element's resolved config (written beside the run folder, ``seed-<n>.config.json``):
    exactly the config the study checked, whatever the preset and overrides would give on their own."""
    config_file = element.run_dir.with_name(f"{element.run_dir.name}.config.json")
    ensure_dir(config_file.parent)
    text = json.dumps(element.config, indent=1, sort_keys=True)
    if config_file.is_symlink() or not config_file.is_file() or config_file.read_text() != text:
        replace_durably(config_file, lambda f: f.write(text.encode()))
    return [sys.executable, "-m", "jit_core", "train", "--config", str(config_file), "--run-dir", str(element.run_dir)]


def evaluate_command(element: Element, study: Study, num_images: int) -> list[str]:
    return [sys.executable, "-m", "jit_core", "evaluate", str(element.run_dir), "--num-images", str(num_images),
            "--save", "none", *study.eval_args]


def _run(cmd: list[str], log: Path, env: dict, what: str, element: Element, children: Children) -> str:
    ensure_dir(log.parent)
    with open_append(log) as f:   # never through a link planted in its place
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = children.start(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env)
        try:
            stdout, _ = proc.communicate()
        finally:
            children.done(proc)
        f.write(stdout)
    if children.stopping is not None:     # a stopped trainer exits 0 after its checkpoint: not finished
        raise _Stopped
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-12:])
        raise StudyJobError(f"{element.label}: {what} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return stdout


def run_element(element: Element, study: Study, num_images: int, threads: int,
                children: Children | None = None, status: LaneStatus | None = None) -> dict:
    """Train (or resume) and evaluate one element; record and return its timings and result file.
    ``status``: told each phase, for the study's heartbeat."""
    children = children or Children()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    if status:
        status.phase(element, "training")
    _run(train_command(element), log_path(element, "train"), env, "training", element, children)
    t1 = time.perf_counter()
    if status:
        status.phase(element, "evaluating")
    out = _run(evaluate_command(element, study, num_images), log_path(element, "eval"), env,
               "evaluation", element, children)
    t2 = time.perf_counter()
    result = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("results:")), None)
    result = stored_path(result, element.run_dir) if result else None   # relative: the folder may move
    record = {"arm": element.arm.name, "seed": element.seed, "train_s": round(t1 - t0, 1),
              "eval_s": round(t2 - t1, 1), "threads": threads, "num_images": num_images, "result": result}
    write_done(element.run_dir, record)
    return record


def write_done(run_dir, record: dict) -> None:
    """Mark a study element finished (trained and evaluated), with its timings and result file."""
    replace_durably(Path(run_dir) / DONE, lambda f: f.write(json.dumps(record, indent=1).encode()))


def prepare_metrics(elements: Sequence[Element], echo: Callable[[str], None]) -> None:
    """Train (or find) the embedded metric's classifier and its reference statistics once, with every core, before
    the lanes start (each lane would otherwise compute its own copy at the same time)."""
    from jit_core.eval.classifier import classifier_path, prepare_reference
    from jit_core.eval.evaluate import CLASSIFIER_DATASETS
    for name, size in sorted({(e.config["data"]["name"], e.config["data"]["image_size"]) for e in elements
                              if not e.config["data"].get("path")}):
        if name in CLASSIFIER_DATASETS:
            if not classifier_path(name, size).is_file():
                echo(f"training the metric's {name} classifier once (cached in {classifier_path(name, size).parent})")
            prepare_reference(name, size)    # and its reference statistics, which every evaluation reads


def run_local(elements: Sequence[Element], study: Study, *, num_images: int, lanes: int = 2,
              echo: Callable[[str], None] = print) -> dict:
    """Run every unfinished element in ``lanes`` lanes; returns {"wall_s", "records"}. Stops launching after a
    failure and raises the first :class:`StudyJobError` once the running elements end."""
    lanes = max(1, int(lanes))
    threads = max(1, (os.cpu_count() or 1) // lanes)
    todo = [e for e in elements if done_record(e) is None]
    todo.sort(key=lambda e: (-element_cost(e), e.seed, e.arm.name))
    skipped = len(elements) - len(todo)
    echo(f"study {study.name}: {len(todo)} of {len(elements)} runs to do ({skipped} done), {lanes} lane(s) x "
         f"{threads} thread(s)")
    if todo:
        prepare_metrics(todo, echo)
    failed: list[StudyJobError] = []
    lock = threading.Lock()
    counter = {"n": skipped}
    children = Children()
    t0 = time.perf_counter()
    status = LaneStatus(study.name, len(elements), skipped)

    def job(e: Element):
        if failed or children.stopping is not None:
            return None
        echo(f"started {e.label} (log {log_path(e, 'train')})")
        try:
            record = run_element(e, study, num_images, threads, children, status)
        finally:
            status.dropped(e)
        with lock:
            status.finished(e)
            counter["n"] += 1
            echo(f"[{counter['n']}/{len(elements)}] {e.label}: trained {record['train_s']:.0f} s, evaluated "
                 f"{record['eval_s']:.0f} s ({time.perf_counter() - t0:.0f} s elapsed)")
        return record

    records = []
    # every HEARTBEAT_S a line with each running run's step and ETA: a study is never silent for long
    with ForwardStopSignals(children, echo), heartbeat(status.line, every_s=HEARTBEAT_S, emit=echo), \
            ThreadPoolExecutor(lanes) as pool:
        for fut in as_completed([pool.submit(job, e) for e in todo]):
            try:
                rec = fut.result()
            except _Stopped:
                continue
            except StudyJobError as exc:
                failed.append(exc)
                continue
            if rec:
                records.append(rec)
    if children.stopping is not None:
        name = signal.Signals(children.stopping).name
        raise StudyInterrupted(f"study {study.name} stopped by {name}: {len(records)} more run(s) finished, the "
                               "running ones checkpointed and exited; run the same command again to resume",
                               children.stopping)
    if failed:
        raise failed[0]
    return {"wall_s": round(time.perf_counter() - t0, 1), "records": records}


class ForwardStopSignals:
    """While active (``with``), SIGTERM / SIGINT to the study stop its children (:meth:`Children.stop`) instead of
    killing the study under them; the study goes on until they have exited. Outside the main thread: no-op."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, children: Children, echo: Callable[[str], None]):
        self.children, self.echo = children, echo
        self.previous: dict[int, Any] = {}   # signal number -> the handler it had before

    def _on_signal(self, signum, frame) -> None:
        first = self.children.stopping is None
        self.children.stop(signum)
        if first:
            self.echo(f"received {signal.Signals(signum).name}: stopping the runs (each writes a checkpoint); "
                      "waiting for them to exit (signal again to abort them at once)")
        else:
            self.echo("aborting the runs at once: the last complete checkpoint of each is kept")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
