"""Feature extraction on a Ray cluster: shards of images, a task each, staged parts, one atomic merge.

``extract_features_ray`` writes the file ``extract_features`` writes (the same names, arrays and
record), and resumes the same way:

- the driver resolves the job (``extract.plan_extraction``) and splits the images still to do into
  shards of ``shard_size`` consecutive names, in the job's order (the same job gives the same
  shards), one Ray task each; a local cluster is started for the job unless an address is given;
- a task builds the extractor once, sets torch's threads to its CPUs, skips the images of its shard
  that an earlier attempt staged, and stages each image as it finishes (``extract.stage_images``):
  a killed task loses at most the image it was on, and Ray re-runs it (``max_retries``). An image
  that cannot be read is skipped, as in one process; the task returns it with its reason;
- once no task runs (also after a failure or Ctrl-C), the driver merges every staged part into
  ``out`` in one atomic commit, as the single-process path does.

Storage: tasks read the images and write their parts (``<out>.parts/``) themselves, so on a cluster
of several machines the image folder and the output's folder must be on storage that every node
mounts at the same path (NFS, a cluster filesystem); relative paths are resolved on the driver. The
driver writes a token file into ``<out>.parts/`` and each task checks that it sees it and the image
folder, stopping the job with a one-line error otherwise. Every node needs the same visloc, the
extractor's weights at the conf's paths, and any module that registers the extractor at run time
(its builder is sent by reference).
"""

from __future__ import annotations

import platform
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from tqdm import tqdm

from visloc.errors import InputError
from visloc.features import EXTRACTORS
from visloc.features.base import Extractor
from visloc.io import parts
from visloc.io.jobs import JobSummary
from visloc.io.locks import output_lock
from visloc.pipelines.extract import ExtractError, ExtractPlan, check_loader_args, commit, plan_extraction, stage_images
from visloc.pipelines.ray_tasks import TasksStillRunningError, connect, import_ray, run_tasks


@dataclass(frozen=True)
class ShardTask:
    """What one Ray task extracts, and how (sent to the worker; small: no other shard's names)."""

    index: int
    names: tuple[str, ...]
    plan: ExtractPlan  # absolute paths, ``todo`` empty
    builder: Callable[[Any], Extractor]
    token: str
    threads: int
    as_half: bool
    device: str
    batch_size: int
    num_workers: int
    crops: Mapping[str, Sequence[int]] | None


@dataclass(frozen=True)
class ShardResult:
    """What one task did: images staged by this attempt, by earlier ones, and the unreadable ones."""

    done: int
    resumed: int
    failed: tuple[tuple[str, str], ...]


def shard_names(names: Sequence[str], shard_size: int) -> list[tuple[str, ...]]:
    """``names`` cut into consecutive shards of ``shard_size`` (the last one shorter)."""
    if shard_size < 1:
        raise InputError(f"shard_size: expected >= 1, got {shard_size}")
    return [tuple(names[i:i + shard_size]) for i in range(0, len(names), shard_size)]


def extract_features_ray(image_dir: str | Path, out: str | Path, *, extractor: str = "aliked-n16",
                         overrides: Mapping[str, Any] | Sequence[str] = (), image_list: Sequence[str] | None = None,
                         as_half: bool = False, overwrite: bool = False, device: str | None = None,
                         progress: bool = True, batch_size: int = 1, num_workers: int = 0,
                         crops: Mapping[str, Sequence[int]] | None = None, address: str | None = None,
                         num_cpus: int | None = None, cpus_per_task: int = 1, gpus_per_task: float = 0.0,
                         shard_size: int = 64, max_retries: int = 3) -> JobSummary:
    """``extract_features`` in Ray tasks (see the module doc); the arguments it shares mean the same.

    Args:
        image_dir: image root, on storage every node sees.
        out: HDF5 feature file, in a folder every node sees.
        extractor: registered extractor name.
        overrides: conf overrides (mapping or ``key=value`` strings).
        image_list: names relative to ``image_dir``; default: every image found.
        as_half: store descriptors and scores as float16.
        overwrite: start afresh, discarding ``out`` and staged work.
        device: ``cpu``, ``cuda``, or None: ``cuda`` when ``gpus_per_task > 0``, else ``cpu``.
        progress: show a progress bar (it moves as shards finish).
        batch_size: images of equal resized size per network call, in each task.
        num_workers: reading processes per task (0: the task reads its images itself).
        crops: per name, a crop box, as ``extract_features``.
        address: an existing cluster (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); None: a local
            cluster of ``num_cpus`` CPUs, shut down after the job (``ray_tasks.connect``).
        num_cpus: CPUs of the local cluster; None: ``os.cpu_count()``.
        cpus_per_task: CPUs Ray reserves per task; torch uses as many threads.
        gpus_per_task: GPUs Ray reserves per task (fractions share one).
        shard_size: images per task.
        max_retries: re-runs of a task whose worker died (a killed process, a lost node).

    Returns:
        The job summary, naming every image skipped in any shard.

    Raises:
        RayMissingError: Ray is not installed (``pip install -e ".[ray]"``).
        TaskFailedError: a shard's worker died more than ``max_retries`` times.
    """
    import_ray()  # a missing Ray is said before anything is read or removed
    check_loader_args(batch_size, num_workers)
    if shard_size < 1 or cpus_per_task < 1 or gpus_per_task < 0 or max_retries < 0:
        raise InputError(f"shard_size >= 1, cpus_per_task >= 1, gpus_per_task >= 0 and max_retries >= 0 expected, "
                         f"got {shard_size}, {cpus_per_task}, {gpus_per_task} and {max_retries}")
    with output_lock(out):  # the driver holds it for the whole job; the tasks only stage parts
        plan = plan_extraction(image_dir, out, extractor=extractor, overrides=overrides, image_list=image_list,
                               overwrite=overwrite)
        summary = plan.summary()
        if not plan.todo:
            if parts.parts_dir(plan.out).is_dir():  # a run killed after staging its last image, before its merge
                commit(plan)
            return summary
        light = replace(plan, image_dir=plan.image_dir.resolve(), out=plan.out.resolve(), todo=())
        token = _write_token(light.out)
        builder = EXTRACTORS.entry(extractor).builder
        device = device if device is not None else ("cuda" if gpus_per_task > 0 else "cpu")  # as Ray reserved
        tasks = [ShardTask(i, names, light, builder, token, cpus_per_task, as_half, device, batch_size, num_workers,
                           None if crops is None else {n: crops[n] for n in names if n in crops})
                 for i, names in enumerate(shard_names(plan.todo, shard_size))]
        with connect(address, num_cpus) as ray:
            remote = ray.remote(_run_shard).options(num_cpus=cpus_per_task, num_gpus=gpus_per_task,
                                                    max_retries=max_retries, retry_exceptions=False)
            _run(ray, remote, plan, tasks, summary, progress)
    return summary


def _run(ray: ModuleType, remote: Any, plan: ExtractPlan, tasks: list[ShardTask], summary: JobSummary,
         progress: bool) -> None:
    """Run the tasks, count what they did into ``summary``, and merge once none runs (unless one may still)."""
    failed: dict[int, tuple[tuple[str, str], ...]] = {}
    with tqdm(total=len(plan.todo), desc=f"extract {plan.extractor} (ray)", disable=not progress, unit="img") as bar:
        def on_done(i: int, result: ShardResult) -> None:
            summary.done += result.done + result.resumed
            failed[i] = result.failed
            bar.update(len(tasks[i].names))

        merge = True
        try:
            run_tasks(ray, remote, tasks, on_done, describe=lambda i: _describe(tasks[i]))
        except TasksStillRunningError:
            merge = False  # a task may still write into the parts folder: the next run merges
            raise
        finally:
            summary.failed.extend(f for i in sorted(failed) for f in failed[i])
            if merge:
                commit(plan)


def _describe(task: ShardTask) -> str:
    first, last = task.names[0], task.names[-1]
    return f"shard {task.index} ({len(task.names)} images, {first}" + (f" .. {last})" if last != first else ")")


def _write_token(out: Path) -> str:
    """Write the job's token file into ``out``'s parts folder, for tasks to check they see that folder."""
    name = f"ray-job-{secrets.token_hex(6)}.token"
    folder = parts.parts_dir(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"{platform.node()}\n")
    except OSError as e:
        raise InputError(f"{out}: cannot write beside it ({e.strerror})") from None
    return name


def _check_shared(task: ShardTask) -> None:
    """Raise ``ExtractError`` unless this worker sees the driver's token file and the image folder."""
    plan, node = task.plan, platform.node()
    folder = parts.parts_dir(plan.out)
    if not (folder / task.token).is_file():
        raise ExtractError(f"{folder}: the Ray worker on {node} does not see this job's files there; the output "
                           "must be on storage every node shares, at the same path")
    if not plan.image_dir.is_dir():
        raise ExtractError(f"{plan.image_dir}: not found by the Ray worker on {node}; the images must be on storage "
                           "every node shares, at the same path")


def _run_shard(task: ShardTask) -> ShardResult:
    """The Ray task: extract and stage the images of one shard not staged yet."""
    _check_shared(task)
    torch.set_num_threads(task.threads)  # this worker process runs one task at a time, on its CPUs
    staged = parts.staged_among(task.plan.out, task.names)  # by an attempt that was killed
    names = [n for n in task.names if n not in staged]
    summary = JobSummary(task.plan.out)
    if names:
        dev = torch.device(task.device)
        model = task.builder(task.plan.conf).to(dev)
        stage_images(model, task.plan, names, summary, as_half=task.as_half, device=dev,
                     batch_size=task.batch_size, num_workers=task.num_workers, crops=task.crops, progress=False)
    return ShardResult(summary.done, len(staged), tuple(summary.failed))
