"""Wind tunnels: generators with exact Bayesian posteriors, looked up by name in :data:`TASKS`."""

from geoprobe.tasks import bijection as _bijection  # noqa: F401  (registers "bijection")
from geoprobe.tasks import linreg as _linreg  # noqa: F401  (registers "linreg")
from geoprobe.tasks import noisy_label as _noisy_label  # noqa: F401  (registers "sula", "coinflip")
from geoprobe.tasks import recall as _recall  # noqa: F401  (registers "recall")
from geoprobe.tasks import sticky_markov as _sticky  # noqa: F401  (registers "sticky")
from geoprobe.tasks.base import TASKS, Task, TaskBatch, make_generator, make_task, stream_seed

try:  # registered by geoprobe/tasks/hmm.py
    from geoprobe.tasks import hmm as _hmm  # noqa: F401
except ImportError:  # pragma: no cover - during bootstrap only
    pass

__all__ = ["TASKS", "Task", "TaskBatch", "make_task", "make_generator", "stream_seed"]
