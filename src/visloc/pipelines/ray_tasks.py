"""Running a pipeline's tasks on Ray: the optional import, the cluster, tasks that stop cleanly.

Ray is an optional extra (``pip install -e ".[ray]"``) and is imported only here, inside functions, when
a ``--ray`` job runs: ``import visloc...`` never imports it. A pipeline passes plain functions and
picklable arguments; Ray ships the function by reference, so every node needs the same visloc
installed (and any module that registers a part the job uses).

Failures, as a pipeline sees them (``run_tasks``):

- a worker that dies (killed, out of memory, its node lost) is Ray's to handle: the task is re-run up
  to ``max_retries`` times (``ray.remote``'s option), elsewhere if need be; past that the job stops
  with ``TaskFailedError``;
- an exception raised by the task's code is not retried (a bad conf or a bug does the same on every
  attempt): a ``VislocError`` reaches the caller as itself (one line for the CLI), anything else as
  Ray's ``RayTaskError``, which carries the remote traceback;
- on the first failure, or Ctrl-C, the other tasks are cancelled and waited for, so that no task still
  writes when the caller merges what finished; ``TasksStillRunningError`` says that the wait ran out.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

from visloc.errors import InputError, VislocError

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[ray]"'


class RayMissingError(VislocError, ImportError):
    """Ray is not installed (it is the optional ``[ray]`` extra)."""


class TaskFailedError(VislocError, RuntimeError):
    """A task whose worker died more often than its retries allow (or that Ray could not run)."""


class TasksStillRunningError(TaskFailedError):
    """Tasks cancelled after a failure that had not stopped when the wait for them ran out."""


def import_ray() -> ModuleType:
    """The ``ray`` module, or ``RayMissingError`` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise RayMissingError(f"Ray is not installed; install visloc's Ray extra: {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def connect(address: str | None = None, num_cpus: int | None = None) -> Iterator[ModuleType]:
    """Yield ``ray``, connected to a cluster; a cluster started here is shut down on exit.

    Args:
        address: an existing cluster (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); None: a local
            cluster of ``num_cpus`` CPUs, started for the job. When this process is already connected
            (the caller ran ``ray.init``, e.g. with its own ``runtime_env``), that connection is used
            and left open; ``address`` and ``num_cpus`` must then be None.
        num_cpus: CPUs of the local cluster; None: ``os.cpu_count()``.

    Raises:
        RayMissingError: Ray is not installed.
        InputError: arguments that do not fit, or a cluster that cannot be reached.
    """
    if num_cpus is not None and num_cpus < 1:
        raise InputError(f"num_cpus: expected >= 1, got {num_cpus}")
    ray = import_ray()
    if ray.is_initialized():
        if address is not None or num_cpus is not None:
            raise InputError("this process is already connected to Ray: pass neither an address nor num_cpus")
        yield ray
        return
    if address is not None and num_cpus is not None:
        raise InputError(f"num_cpus sizes a local cluster; the cluster at {address} has its own")
    try:
        if address is None:
            # "local": a new cluster, never one that RAY_ADDRESS or an earlier `ray start` points at
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False)
        else:
            ray.init(address=address)
    except (ConnectionError, TimeoutError) as e:
        raise InputError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0][:120]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def run_tasks(ray: ModuleType, remote: Any, args: Sequence[Any], on_done: Callable[[int, Any], None], *,
              describe: Callable[[int], str], stop_timeout_s: float = 120.0) -> None:
    """Run ``remote.remote(args[i])`` for every ``i``; ``on_done(i, result)`` as each finishes.

    Args:
        ray: the connected module (``connect``).
        remote: a Ray remote function (``ray.remote(fn).options(...)``).
        args: one argument per task.
        on_done: called in the driver, in the order tasks finish.
        describe: ``describe(i)`` names task ``i`` in error messages.
        stop_timeout_s: how long to wait for cancelled tasks after a failure.

    Raises:
        TaskFailedError: a task's worker died past its retries (or Ray could not run it).
        TasksStillRunningError: after a failure, cancelled tasks had not stopped within the timeout.
        VislocError: the one a task raised; other exceptions of a task as Ray's ``RayTaskError``.
    """
    refs = [remote.remote(a) for a in args]
    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    current = -1
    try:
        while pending:
            current = -1
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                current = index[ref]
                on_done(current, ray.get(ref))
    except BaseException as error:
        _stop(ray, pending, stop_timeout_s, error)
        _reraise(ray, error, describe(current) if current >= 0 else "a task")


def _stop(ray: ModuleType, pending: list[Any], timeout_s: float, cause: BaseException) -> None:
    """Cancel ``pending`` (killing their workers) and wait until Ray reports each one finished."""
    if not pending:
        return
    for ref in pending:
        ray.cancel(ref, force=True)
    _, still = ray.wait(pending, num_returns=len(pending), timeout=timeout_s)
    if still:
        raise TasksStillRunningError(f"{len(still)} cancelled Ray tasks had not stopped after {timeout_s:.0f} s; "
                                     "their results are not merged (re-run the job to resume)") from cause


def _reraise(ray: ModuleType, error: BaseException, what: str) -> None:
    """Raise ``error`` as the caller should see it (see the module doc)."""
    exceptions = ray.exceptions
    if isinstance(error, exceptions.RayTaskError):
        cause = getattr(error, "cause", None)  # the exception the task raised
        if isinstance(cause, VislocError):
            raise cause from None
        raise error
    if isinstance(error, exceptions.RayError):
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        raise TaskFailedError(f"{what}: {type(error).__name__} ({first}); what it finished is kept: re-run the "
                              "job to resume") from error
    raise error
