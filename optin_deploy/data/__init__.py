"""Data: built-in data sets, users' files and the :class:`Task` contract."""

from .types import Modality, Split, Task, TaskData, TaskType

__all__ = ["Modality", "Split", "Task", "TaskData", "TaskType", "load_data"]


def load_data(spec, **kwargs) -> TaskData:
    """See :func:`optin_deploy.data.loaders.load_data` (imported lazily)."""
    from .loaders import load_data as _load

    return _load(spec, **kwargs)
