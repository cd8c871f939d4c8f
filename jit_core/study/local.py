"""Run a study's elements on this machine: ``lanes`` subprocess lanes of ``jit train`` then ``jit evaluate``.

Each lane gets ``cores / lanes`` threads (two 1-thread lanes on 2 cores trained 1.75x faster than one
2-thread run: measured, docs/embedded-comparison.md). Costlier elements start first. An element that
finished (``<run>/study-element.json``) is skipped, and an interrupted one resumes from its checkpoint
(``jit train`` resumes a folder holding its run), so re-running the command continues the study.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from jit_core.durable import replace_durably
from jit_core.progress import heartbeat

from .lanes import LaneStatus
from .spec import Element, Study, StudyError

DONE = "study-element.json"
HEARTBEAT_S = float(os.environ.get("JIT_HEARTBEAT_S", 30))


class StudyJobError(StudyError):
    """An element's training or evaluation failed; the message ends with the log's tail."""


def element_cost(element: Element) -> int:
    """Relative cost used for ordering: every co-denoising plugin roughly doubles a step."""
    return 1 + 2 * len(element.config.get("plugins") or [])


def done_record(element: Element) -> dict | None:
    path = element.run_dir / DONE
    return json.loads(path.read_text()) if path.is_file() else None


def log_path(element: Element, what: str) -> Path:
    """``OUT/<arm>/seed-<n>.<what>.log``: beside the run folder (the trainer wants its folder to itself)."""
    return element.run_dir.with_name(f"{element.run_dir.name}.{what}.log")


def train_command(element: Element) -> list[str]:
    """``jit train`` of the element's resolved config (written beside the run folder, ``seed-<n>.config.json``):
    exactly the config the study checked, whatever the preset and overrides would give on their own."""
    config_file = element.run_dir.with_name(f"{element.run_dir.name}.config.json")
    config_file.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(element.config, indent=1, sort_keys=True)
    if not config_file.is_file() or config_file.read_text() != text:
        replace_durably(config_file, lambda f: f.write(text.encode()))
    return [sys.executable, "-m", "jit_core", "train", "--config", str(config_file), "--run-dir", str(element.run_dir)]


def evaluate_command(element: Element, study: Study, num_images: int) -> list[str]:
    return [sys.executable, "-m", "jit_core", "evaluate", str(element.run_dir), "--num-images", str(num_images),
            "--save", "none", *study.eval_args]


def _run(cmd: list[str], log: Path, env: dict, what: str, element: Element) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env)
        f.write(proc.stdout)
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-12:])
        raise StudyJobError(f"{element.label}: {what} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return proc.stdout


def run_element(element: Element, study: Study, num_images: int, threads: int, status: LaneStatus | None = None) -> dict:
    """Train (or resume) and evaluate one element; record and return its timings and result file.
    ``status``: told each phase, for the study's heartbeat."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    if status:
        status.phase(element, "training")
    _run(train_command(element), log_path(element, "train"), env, "training", element)
    t1 = time.perf_counter()
    if status:
        status.phase(element, "evaluating")
    out = _run(evaluate_command(element, study, num_images), log_path(element, "eval"), env,
               "evaluation", element)
    t2 = time.perf_counter()
    result = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("results:")), None)
    record = {"arm": element.arm.name, "seed": element.seed, "train_s": round(t1 - t0, 1),
              "eval_s": round(t2 - t1, 1), "threads": threads, "num_images": num_images, "result": result}
    write_done(element.run_dir, record)
    return record


def write_done(run_dir, record: dict) -> None:
    """Mark a study element finished (trained and evaluated), with its timings and result file."""
    replace_durably(Path(run_dir) / DONE, lambda f: f.write(json.dumps(record, indent=1).encode()))


def prepare_metrics(elements: Sequence[Element], echo: Callable[[str], None]) -> None:
    """Train (or find) the embedded metric's classifier once, with every core, before the lanes start (each lane
    would otherwise train its own copy at the same time)."""
    from jit_core.eval.classifier import classifier_path, get_classifier
    from jit_core.eval.evaluate import CLASSIFIER_DATASETS
    for name, size in sorted({(e.config["data"]["name"], e.config["data"]["image_size"]) for e in elements
                              if not e.config["data"].get("path")}):
        if name in CLASSIFIER_DATASETS and not classifier_path(name, size).is_file():
            echo(f"training the metric's {name} classifier once (cached in {classifier_path(name, size).parent})")
            get_classifier(name, size)


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
    t0 = time.perf_counter()
    status = LaneStatus(study.name, len(elements), skipped)

    def job(e: Element):
        if failed:
            return None
        echo(f"started {e.label} (log {log_path(e, 'train')})")
        try:
            record = run_element(e, study, num_images, threads, status)
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
    with heartbeat(status.line, every_s=HEARTBEAT_S, emit=echo), ThreadPoolExecutor(lanes) as pool:
        for fut in as_completed([pool.submit(job, e) for e in todo]):
            try:
                rec = fut.result()
            except StudyJobError as exc:
                failed.append(exc)
                continue
            if rec:
                records.append(rec)
    if failed:
        raise failed[0]
    return {"wall_s": round(time.perf_counter() - t0, 1), "records": records}
