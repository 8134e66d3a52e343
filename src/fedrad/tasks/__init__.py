"""Tasks: what a model is, how it learns one batch, and which statistics evaluate it."""

from __future__ import annotations

from fedrad.tasks.base import Task, TaskKind
from fedrad.tasks.classification import ClassificationTask

__all__ = ["ClassificationTask", "Task", "TaskKind"]
