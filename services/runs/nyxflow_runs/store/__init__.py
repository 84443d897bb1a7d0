"""The repository layer: every query of the suite lives in this package. Each public method
is scoped by the caller's tenant (a scoped session, scoping.py), except the sweeper's and the
operator's (admin.py), which say so."""

from __future__ import annotations

from nyxflow_runs.store.admin import Admin, MoveReport
from nyxflow_runs.store.base import Claim, Draft
from nyxflow_runs.store.engine_writes import EngineWrites
from nyxflow_runs.store.operations import Operations
from nyxflow_runs.store.pipelines import Pipelines
from nyxflow_runs.store.projects import Projects
from nyxflow_runs.store.sweeping import Sweeping
from nyxflow_runs.store.workflows import Workflows


class Store(Pipelines, Workflows, Projects, Operations, EngineWrites, Sweeping, Admin):
    """All of it, on one session factory and bus."""


__all__ = ["Claim", "Draft", "MoveReport", "Store"]
