"""The old import path of :class:`slurm.job.TrainJob`, for pickles only.

Jobs submitted before the launcher was split into ``slurm.options``, ``slurm.runs``, ``slurm.job``,
``slurm.submit``, ``slurm.watch`` and ``slurm.records`` hold a pickled ``slurm.launcher.TrainJob``;
a requeued one unpickles it again on the node. New code imports from those modules, not from here.
"""
from .job import TrainJob

__all__ = ["TrainJob"]
