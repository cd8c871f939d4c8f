import os

if os.environ.get("JIT_STUDY_PARENT_PID"):   # started by `jit study`: stop when it is gone (kill -9)
    from jit_core.training.signals import stop_with_parent
    stop_with_parent()

from jit_core.cli import main  # noqa: E402

main()
