"""``load_run("hf://OWNER/REPO")``: a run ``jit push`` uploaded, read back from the Hub (or its local cache).

The repository holds ``config.json``, ``checkpoint-last.pth`` (official layout) and ``jit-run.json``
(:mod:`jit_core.runs.push`). Each file is fetched through :func:`jit_core.runs.hub.fetch` (the cache first;
offline, a missing file is a one-line error). The config is untrusted input like a run folder's: plugins it
names that are not installed load only when trusted.
"""
from __future__ import annotations

import json
from pathlib import Path

from jit_core.config import Config, ConfigError, check_values, read_config_file
from jit_core.official.layout import import_official
from jit_core.plugins import check_run_plugins
from jit_core.runs import hub
from jit_core.runs.compat import check_compatible
from jit_core.runs.loading import LoadedRun, build_model_for
from jit_core.runs.push import CHECKPOINT, CONFIG, RUN_INFO


def load_hub_run(name: str, ema: str = "ema1", device="cpu", trust_plugins=()) -> LoadedRun:
    """The run pushed to ``hf://OWNER/REPO[@REVISION]``, with the chosen weights, in eval mode."""
    if ema not in ("model", "ema1", "ema2"):
        raise ValueError(f"unknown weights {ema!r}: use model, ema1 or ema2")
    repo = hub.parse_repo(name)
    config_path = hub.fetch(str(repo.file(CONFIG)))
    try:     # a downloaded file is untrusted input: the checks a run folder's config.json passes
        config = Config.from_dict(read_config_file(config_path))
        check_values(config)
    except ConfigError as e:
        raise ConfigError(f"{repo.file(CONFIG)}: {e}; was the repository written by jit push?") from None
    check_run_plugins(config.plugins, trust_plugins, repo.file(CONFIG))
    config.run_dir = None
    model, plugins = build_model_for(config, device=device)
    config = plugins.resolved_config()      # resolved: the config the plugins' run objects were made for
    weights_path = hub.fetch(str(repo.file(CHECKPOINT)))
    weights = import_official(weights_path)[ema]
    check_compatible(weights, model, str(repo.file(CHECKPOINT)))
    model.load_state_dict(weights)
    model.eval()
    step = 0
    try:
        info = json.loads(hub.fetch(str(repo.file(RUN_INFO))).read_text())
        step = int(info.get("step", 0)) if isinstance(info, dict) else 0
    except (hub.HubError, ValueError, TypeError):
        pass    # the step is a label; a repository without jit-run.json still loads
    return LoadedRun(Path(config_path).parent, config, model, plugins, step, weights_path, ema)
