"""hyperspace_explorer: reproducible, distributed ML experimentation.

Public API (see README.md): `Configurable`, `Scenario`, `Task`, `RunQueue`, `Worker`,
`load_results`, and the errors in `hyperspace_explorer.errors`.
"""
from .configurable import Configurable
from .errors import ConfigError, HSEError, MetricError, StoreError, StudyError, TaskError
from .scenario import Scenario
from .task import Task, load_task

__all__ = ["Configurable", "Scenario", "Task", "load_task", "RunQueue", "Worker", "load_results",
           "load_model",
           "HSEError", "ConfigError", "TaskError", "StoreError", "StudyError", "MetricError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: importing the package from a notebook must not pay for Sacred or pandas.
    if name == "RunQueue":
        from .queue import RunQueue
        return RunQueue
    if name == "Worker":
        from .worker import Worker
        return Worker
    if name == "load_model":
        from .models import load_model
        return load_model
    if name == "load_results":
        from .results import load_results
        return load_results
    raise AttributeError(f"module 'hyperspace_explorer' has no attribute {name!r}")
