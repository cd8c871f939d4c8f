"""Evaluation results on disk and on screen: the saved record of a grid point, the grid's summary (best
point marked), its markdown and terminal tables."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from jit_core import durable
from jit_core.eval.record_checks import NUMERIC_METRICS, ResultFileError, check_record, read_record

log = logging.getLogger(__name__)

METRIC_COLUMNS = NUMERIC_METRICS


def primary_metric(kind: str) -> str | None:
    return {"inception": "fid", "classifier": "fd_classifier"}.get(kind)


def finished(path: Path, wanted: dict, world: int) -> dict | None:
    """The saved record at ``path`` if it was computed with ``wanted`` settings (rank 0 decides for all)."""
    rec: dict | None = None
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank == 0 and path.is_file():
        found: object = None
        try:    # a damaged or edited point is computed again (and its file replaced), with a warning naming it
            found = read_record(path)
            if isinstance(found, dict) and found.get("settings_key") == wanted:
                check_record(found, path)
        except ResultFileError as e:
            log.warning("%s; computing that point again", e)
            found = None
        if isinstance(found, dict) and found.get("settings_key") == wanted and "metrics" in found:
            rec = found
    if world > 1:
        box: list[dict | None] = [rec]
        dist.broadcast_object_list(box, src=0)
        rec = box[0]
    return rec


def sweep_summary(records: list[dict], kind: str, path: Path) -> dict:
    """The grid's summary (to be saved at ``path``): one point per record, the best by the primary metric (lower is
    better)."""
    key = primary_metric(kind)
    scored = [r for r in records if key and r["metrics"].get(key) is not None]
    best = min(scored, key=lambda r: r["metrics"][key]) if scored else None
    tied = [r for r in scored if best is not None and r["metrics"][key] == best["metrics"][key]]
    if len(tied) > 1:      # exact ties: no point is better than the others, so none is starred
        best = None
    emas = list(dict.fromkeys(r["checkpoint"]["weights"] for r in records))
    points = [{"ema": r["checkpoint"]["weights"], "cfg": r["guidance"]["cfg"],
               "value": r["metrics"].get(key) if key else None, "interval": (r.get("intervals") or {}).get(key),
               "best": r is best, "resumed": bool(r.get("resumed")), "json": r["json"]} for r in records]
    for point, r in zip(points, records):
        point["tied"] = len(tied) > 1 and any(r is t for t in tied)
    summary = {"kind": "ema_cfg_grid" if len(emas) > 1 else "cfg_sweep", "primary_metric": key, "emas": emas,
               "cfgs": list(dict.fromkeys(r["guidance"]["cfg"] for r in records)), "points": points,
               "values": [p["value"] for p in points],
               "best_cfg": best["guidance"]["cfg"] if best else None,
               "best_ema": best["checkpoint"]["weights"] if best else None, "best": best, "results": records,
               "note": ("the best " + ("EMA and cfg were" if len(emas) > 1 else "cfg was") + " chosen on these same "
                        "samples (report it on fresh samples, e.g. another --seed)"),
               "json": str(path)}
    return summary


def sweep_markdown(result: dict) -> str:
    """The grid as a markdown table (one row per point, the best marked)."""
    key = result["primary_metric"] or "metric"
    lines = [f"# {'EMA x CFG grid' if result['kind'] == 'ema_cfg_grid' else 'CFG sweep'}: {key}", "",
             f"| weights | cfg | {key} | 95 % interval | best |", "|---|---|---|---|---|"]
    for p in result["points"]:
        iv = p["interval"]
        lines.append(f"| {p['ema']} | {p['cfg']:g} | {_cell(p['value'])} | "
                     f"{f'[{_cell(iv[0])}, {_cell(iv[1])}]' if iv else '-'} | {'**best**' if p['best'] else ''} |")
    ties = [p for p in result["points"] if p.get("tied")]
    lines += ["", f"Best: {result['best_ema']} at cfg {result['best_cfg']}; {result['note']}." if result["best"]
              else f"No best: {len(ties)} points tie exactly at {_cell(ties[0]['value'])}." if ties
              else "No point has a value of the primary metric.", ""]
    return "\n".join(lines)


def _cell(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def write_json(path, obj) -> None:
    """Write ``obj`` as JSON by a durable rename (a reader sees the old file or the whole new one; a full disk
    leaves the old one whole and ends in one line; a link in its place is refused)."""
    durable.write_json(Path(path), obj, default=_json_default)


def save_record(out: Path, name: str, record: dict, run_dir: Path) -> Path:
    """Write a result (a point or a grid summary) to ``out/<name>.json``: the path is built from the folder being
    written and the result's name, never read from a file. Paths inside it are stored relative to the run folder
    (:func:`for_disk`), so a copied or moved run keeps working and never touches the original."""
    path = durable.ensure_dir(Path(out)) / f"{name}.json"
    write_json(path, for_disk(record, run_dir))
    return path


_PATH_KEYS = ("json", "path")   # the fields of a result that hold a file or folder path


def for_disk(obj, run_dir: Path):
    """A copy of ``obj`` whose path fields (``json``, ``samples.path``, nested records too) are relative to
    ``run_dir`` (:func:`jit_core.durable.stored_path`). Such a stored path is for display and reading only."""
    obj = copy.deepcopy(obj)

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k in _PATH_KEYS and isinstance(v, (str, Path)) and v:
                    o[k] = durable.stored_path(v, run_dir)
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(obj)
    return obj


def _json_default(o: Any):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, (Path, torch.device)):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def format_table(result: dict) -> str:
    """The result (one point or a grid) as a terminal table, the best point starred."""
    records = result["results"] if "results" in result else [result]
    keys = [k for k in METRIC_COLUMNS if any(r["metrics"].get(k) is not None for r in records)]
    prim = records[0].get("primary_metric")
    has_iv = bool(prim and any((r.get("intervals") or {}).get(prim) for r in records))
    lines = [" ".join([f"{'weights':>7}", f"{'cfg':>6}"] + [f"{k:>14}" for k in keys]
                      + ([f"{'95 % interval':>22}"] if has_iv else []))]
    for r in records:
        vals = [r["metrics"].get(k) for k in keys]
        mark = " *" if result.get("best") is r else ""
        iv = (r.get("intervals") or {}).get(prim) if has_iv else None
        ivs = [f"{f'[{iv[0]:.4g}, {iv[1]:.4g}]' if iv else '-':>22}"] if has_iv else []
        lines.append(" ".join([f"{r['checkpoint']['weights']:>7}", f"{r['guidance']['cfg']:>6g}"]
                              + [f"{v:>14.4f}" if v is not None else f"{'-':>14}" for v in vals] + ivs) + mark)
    return "\n".join(lines)
