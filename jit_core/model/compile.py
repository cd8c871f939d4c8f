"""``torch.compile`` for JiT: every block and every head compiled in place, with a recompile limit that covers them.

All blocks share one code object (``JointBlock.forward``), so dynamo keeps one cache of compiled
variants for all of them, and likewise for the heads (``FinalLayer.forward``). What a compiled block
guards on, and so the variants a run meets:

- the grad mode (training vs sampling) and the train/eval flag;
- the token counts: before and after the in-context tokens, and the batch size (training, the
  doubled CFG batch, a last partial batch); after the first change dynamo marks the size dynamic,
  so these cost one or two variants, not one per value;
- the form of the mask: None, a token mask tensor (training with blocked streams; its contents are
  data the block does not guard on), or the sampler's :class:`~jit_core.model.StreamGroups`
  (built once per call; its block patterns are constants of the call);
- per-block constants that differ between blocks (attention / projection dropout of the middle
  blocks of JiT-H and -G).

The official training compiles each block and the final layer the same way (JiT, arXiv 2511.13720;
docs/architecture.md, "Compile").
"""
from __future__ import annotations

from typing import Any, cast

import torch
import torch._dynamo

# Variants of one code object: 2 grad modes x 3 mask forms x 2 (static, then dynamic sizes) x 2
# (per-block dropout constants) = 24, rounded up. PyTorch's default (8) is exhausted by a V-Co run
# within a few steps, after which the remaining variants silently run eagerly.
RECOMPILE_LIMIT = 32


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    """Let dynamo keep at least ``limit`` compiled variants per code object (never lowers a higher setting)."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, limit)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 8 * limit)


def compile_model(model: torch.nn.Module, **options: Any) -> torch.nn.Module:
    """Compile ``model``'s blocks and heads in place (``nn.Module.compile``; ``options`` go to ``torch.compile``).

    In place, so training, the trainer's sample grids and EMA sampling all run the compiled code.
    The embedders and the in-context concatenation stay eager (small, and they change shape).
    """
    raise_recompile_limit()
    for block in cast(torch.nn.ModuleList, model.blocks):
        block.compile(**options)
    for head in cast(torch.nn.ModuleDict, model.heads).values():
        head.compile(**options)
    return model
