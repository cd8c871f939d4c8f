"""Presses Ctrl-C twice during training step 3 (real SIGINTs to this process; the handler runs between them),
for the test of the second Ctrl-C. Loaded by module path: ``--plugin tests.ctrl_c_plugin``."""
from __future__ import annotations

import os
import signal

from jit_core import hookimpl

AT_STEP = 3
_calls = 0


@hookimpl
def jit_loss_terms(step):
    global _calls
    _calls += 1
    if _calls == AT_STEP:
        os.kill(os.getpid(), signal.SIGINT)     # the first: finish the step, checkpoint, exit
        os.kill(os.getpid(), signal.SIGINT)     # the second, while the step is still running: abort at once
    return {}
