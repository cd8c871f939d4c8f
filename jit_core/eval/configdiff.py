"""Which config keys (flattened, plugin options included) differ between runs, as rows and markdown."""
from __future__ import annotations

import json

from jit_core.config import flatten

NOT_SET = "(not set)"   # a key one run's config does not have (e.g. another plugin's option)


def diff_cell(value) -> str:
    return NOT_SET if value is NOT_SET else json.dumps(value, default=str)


def config_diff(configs: dict[str, dict]) -> list[tuple[str, dict[str, object]]]:
    """``[(key, {run: value})]`` for every flattened key whose value differs between the runs.

    ``plugin_options.<plugin>.<option>`` and ``plugins`` are included; ``run_dir`` is ignored.
    """
    flat = {name: flatten(c, plugin_prefix="plugin_options.") for name, c in configs.items()}
    keys = sorted({k for f in flat.values() for k in f} - {"run_dir"})
    missing = object()
    rows = []
    for k in keys:
        vals = {n: f.get(k, missing) for n, f in flat.items()}
        if len({json.dumps(v, default=str) if v is not missing else "<missing>" for v in vals.values()}) > 1:
            rows.append((k, {n: (NOT_SET if v is missing else v) for n, v in vals.items()}))
    return rows


def diff_markdown(diff, names) -> str:
    if not diff:
        return "# Config differences\n\nThe runs' configs are identical (run_dir aside).\n"
    lines = ["# Config differences", "", "| key | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for key, vals in diff:
        cells = (NOT_SET if vals[n] is NOT_SET else f"`{diff_cell(vals[n])}`" for n in names)
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
