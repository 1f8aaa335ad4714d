"""Where jobs run. The queue stays in the database whatever runs them; an executor only
executes one attempt of one job (:func:`moodlens.service.worker.run_job`) somewhere.

The interface is small on purpose, so a distributed engine can stand in for the local
processes::

    class Executor(Protocol):
        slots: int                                   # attempts it can run at once
        def submit(self, attempt: Attempt) -> Future # resolves to the analysis id, or None
        def shutdown(self, grace_s: float) -> None   # finish or abandon what runs

Cancelling goes through the database (the job's flag, which the attempt polls), so an
executor needs no cancel of its own.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Attempt:
    """Everything an executor needs to run one attempt of a job."""

    db: str
    job_id: int
    attempt: int
    data_dir: str


class Executor(Protocol):
    slots: int

    def submit(self, attempt: Attempt) -> Future: ...

    def shutdown(self, grace_s: float) -> None: ...


__all__ = ["Attempt", "Executor"]
