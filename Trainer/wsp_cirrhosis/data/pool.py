"""Build slice-cache entries in parallel: a process pool on each machine, a share per torchrun rank.

Workers start from a fork server (a fresh interpreter that imported the preprocessing once), not
by forking a process whose torch / ITK thread pools may be running. Each worker uses one thread:
the pool is the parallelism, and entries are byte-identical whatever built them (prepare_ct is
per-voxel arithmetic; the hash memo is saved with sorted keys). When building a cache this
process is one of the workers: the pool's processes take patients from the front of the queue
and this process from the back, beginning while the pool starts, so the pool's start-up (about
1 s) is not idle time.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from queue import Empty, SimpleQueue
from contextlib import contextmanager
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..config import PreprocessConfig
from ..errors import InputError, WSPError
from ..progress import track
from .manifest import PatientRecord

if TYPE_CHECKING:
    from .cache import HashMemo

log = logging.getLogger("wsp_cirrhosis")


def default_workers() -> int:
    """One process per CPU core this process may use, divided among the ranks of this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


# Wall seconds to start a pool of forkserver workers that import SimpleITK and torch (measured
# 1.15 s on a quiet 2-core machine, docs/benchmarks/preprocess.md), with a margin for two
# processes slowing each other (CPU per patient +15-35% with both cores busy).
POOL_START_S = 2.5


def parse_workers(value: int | str | None) -> int | None:
    """``--workers``: None for ``auto`` (or None), else a process count (0 = one per core).

    Raises:
        ConfigError: neither ``auto`` nor an integer >= 0.
    """
    from ..errors import ConfigError

    text = "auto" if value is None else str(value).strip().lower()
    if text == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 1024:
        raise ConfigError(f"--workers {value}: give auto, or a number of processes from 0 (one per core) to 1024")
    return n or default_workers()


def pool_pays(remaining: int, seconds_each: float, workers: int) -> bool:
    """Whether `workers` processes finish `remaining` tasks of `seconds_each` sooner than this process.

    This process keeps working while the pool starts (S = POOL_START_S), so with W seconds of work
    left a pool ends after about (W + S (workers - 1)) / workers instead of W: it pays when W > S.
    """
    return workers > 1 and remaining * seconds_each > POOL_START_S


def auto_note(remaining: int, seconds_each: float, workers: int) -> str:
    """The log line of an ``auto`` choice: what was measured and what it decided."""
    pays = pool_pays(remaining, seconds_each, workers)
    verdict = (f"{workers} workers pay" if pays else
               f"1 worker (a pool's start-up of ~{POOL_START_S:g} s would cost more than it saves)")
    return (f"--workers auto: the first patient took {seconds_each:.2f} s, {remaining} to go on {workers} "
            f"core(s): {verdict}")


def _init_worker() -> None:
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch and SimpleITK on one thread in this process (it works beside the pool), restored after."""
    import SimpleITK as sitk
    import torch

    before = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    _init_worker()
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[1])


def _error_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, WSPError) else f"{type(exc).__name__}: {exc}"


def _build_one(record: PatientRecord, cfg: PreprocessConfig, cache_dir: Path, hashes: dict) -> tuple[dict, str | None, float]:
    """Worker task: build one entry; return (its input hashes, error text or None, CPU seconds)."""
    from .cache import HashMemo, build_entry

    start = time.process_time()
    memo = HashMemo(None, dict(hashes))
    try:
        build_entry(record, cfg, cache_dir, memo)
    except Exception as exc:  # one bad patient must not stop the cohort: reported by the parent
        log.debug("patient %s failed", record.patient_id, exc_info=not isinstance(exc, InputError))
        return memo.table, _error_text(exc), time.process_time() - start
    return memo.table, None, time.process_time() - start


def _build_chunk(records: list[PatientRecord], cfg: PreprocessConfig, cache_dir: Path,
                 hashes: dict) -> list[tuple[dict, str | None, float]]:
    """Worker task: `_build_one` for several patients (fewer round trips for small CTs)."""
    return [_build_one(r, cfg, cache_dir, hashes) for r in records]


def chunks(items: list, workers: int, per_worker: int = 4) -> list[list]:
    """`items` in consecutive chunks, about `per_worker` chunks per worker (balance vs round trips)."""
    size = max(1, -(-len(items) // (workers * per_worker)))
    return [items[i:i + size] for i in range(0, len(items), size)]


def pool_context() -> mp.context.BaseContext:
    """A fork server where the platform has one (Linux, macOS), else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["wsp_cirrhosis.data.slices", "wsp_cirrhosis.data.cache"])
        return ctx
    return mp.get_context("spawn")


def make_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool of `workers` single-threaded preprocessing processes."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(), initializer=_init_worker)


Task = tuple[list[PatientRecord], dict]  # a chunk of patients and the input hashes already known
Result = tuple[PatientRecord, dict, str | None, float]  # record, its input hashes, error or None, CPU s


def _in_pool(pool: ProcessPoolExecutor, task: Task, cfg: PreprocessConfig, cache_dir: Path) -> list[Result]:
    """Build `task` in a pool process and wait for it (raises only if the pool takes no work)."""
    fut = pool.submit(_build_chunk, task[0], cfg, cache_dir, task[1])
    try:
        results = fut.result()
    except BrokenProcessPool:
        results = [({}, "a preprocessing process died (out of memory? try fewer --workers)", 0.0)] * len(task[0])
    except Exception as exc:  # e.g. a record that cannot be sent to the worker
        results = [({}, _error_text(exc), 0.0)] * len(task[0])
    return [(record, *result) for record, result in zip(task[0], results)]


def _shared_results(pool: ProcessPoolExecutor, tasks: list[Task], cfg: PreprocessConfig, cache_dir: Path,
                    pool_size: int) -> Iterator[tuple[PatientRecord, dict, str | None, float, bool]]:
    """Yield (record, hashes, error, CPU seconds, built here?) of every task, in completion order.

    One thread per pool process takes tasks from the front of the queue, one at a time (so none
    waits in the pool's queue at the end); this process takes them from the back, starting while
    the pool's processes start (the first submit waits for them). If the pool takes no work, its
    threads hand their task back and this process builds the rest.
    """
    todo, lock, done = deque(tasks), threading.Lock(), SimpleQueue()

    def feed() -> None:
        while True:
            with lock:
                if not todo:
                    return
                task = todo.popleft()
            try:
                results = _in_pool(pool, task, cfg, cache_dir)
            except Exception:  # a shut-down or broken pool: this process builds the rest
                with lock:
                    todo.appendleft(task)
                return
            for result in results:
                done.put(result)

    feeders = [threading.Thread(target=feed, name=f"preprocess-feeder-{i}", daemon=True) for i in range(pool_size)]
    for thread in feeders:
        thread.start()
    with one_thread():
        while True:
            while not done.empty():
                yield *done.get(), False
            with lock:
                task = todo.pop() if todo else None
            if task is None:
                if not any(thread.is_alive() for thread in feeders):
                    break
                try:  # the pool is finishing its last tasks (or handing one back)
                    yield *done.get(timeout=0.05), False
                except Empty:
                    pass
                continue
            for record in task[0]:
                yield record, *_build_one(record, cfg, cache_dir, task[1]), True
    while not done.empty():
        yield *done.get(), False


def _build_here(records: list[PatientRecord], cfg: PreprocessConfig, cache_dir: Path, memo: "HashMemo",
                failures: dict[str, str], progress: Iterator | None = None) -> float:
    """Build `records` in this process (adding to `failures`); return the CPU seconds used."""
    from .cache import build_entry

    cpu = -time.process_time()
    for record in progress if progress is not None else records:
        try:
            build_entry(record, cfg, cache_dir, memo)
        except Exception as exc:  # reported with the others; -v keeps a bug's traceback
            log.debug("patient %s failed", record.patient_id, exc_info=not isinstance(exc, InputError))
            failures[record.patient_id] = _error_text(exc)
    return cpu + time.process_time()


def build_entries(records: list[PatientRecord], cfg: PreprocessConfig, cache_dir: Path, memo: "HashMemo",
                  workers: int | None) -> dict[str, str]:
    """Build the missing or stale entries of `records` with `workers` processes; return {patient_id: error}.

    `workers` None (``--workers auto``): the first stale patient is built here and timed; the rest go
    to a pool of one process per core only when `pool_pays`, and the log says which was chosen.
    """
    from .cache import fresh_meta

    stale = [r for r in records if fresh_meta(r, cfg, cache_dir, memo, hash_inputs=False) is None]
    failures: dict[str, str] = {}
    if not stale:
        return failures
    start, cpu, built = time.perf_counter(), 0.0, len(stale)
    if workers is None:
        first = time.perf_counter()
        cpu += _build_here(stale[:1], cfg, cache_dir, memo, failures)
        each, stale, cores = time.perf_counter() - first, stale[1:], default_workers()
        if stale:
            log.info("%s", auto_note(len(stale), each, cores))
        workers = cores if pool_pays(len(stale), each, cores) else 1
    workers = min(workers, len(stale))
    if workers <= 1:
        cpu += _build_here(stale, cfg, cache_dir, memo, failures, track(stale, desc="preprocess"))
        cpu_here = cpu
    else:  # this process is one of the workers
        cpu_here = cpu
        pool = make_pool(workers - 1)
        try:
            tasks = [(part, memo.subset(*[p for r in part for p in (r.image, r.liver_mask)]))
                     for part in chunks(stale, workers, per_worker=8)]
            for record, hashes, error, used, here in track(_shared_results(pool, tasks, cfg, cache_dir, workers - 1),
                                                           total=len(stale), desc=f"preprocess ({workers} workers)"):
                memo.update(hashes)
                cpu, cpu_here = cpu + used, cpu_here + (used if here else 0.0)
                if error is not None:
                    log.warning("patient %s failed: %s", record.patient_id, error)
                    failures[record.patient_id] = error
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    log.info("preprocessed %d patient(s) with %d worker(s): %.1f s, %.1f CPU-s in preprocessing (%.1f in this process)",
             built, max(workers, 1), time.perf_counter() - start, cpu, cpu_here)
    return failures


def build_cohort_cache(records: list[PatientRecord], cfg: PreprocessConfig, cache_dir: Path, memo: "HashMemo",
                       workers: int | None, shard_ranks: bool = False) -> dict[str, str]:
    """Build every entry of a cohort; with `shard_ranks` under torchrun, rank r builds records[r::world]
    and all ranks wait for each other (every rank must call this together).

    Returns:
        {patient_id: error} over all ranks; the memo holds every rank's input hashes.
    """
    from ..distributed import get_rank, get_world_size, is_distributed

    shard = shard_ranks and is_distributed()
    rank, world = (get_rank(), get_world_size()) if shard else (0, 1)
    mine = records[rank::world]
    if shard:
        log.info("rank %d/%d: preprocessing its share, %d of %d patients", rank, world, len(mine), len(records))
    failures = build_entries(mine, cfg, cache_dir, memo, parse_workers(workers))
    if shard:  # all_gather_object also waits for the slowest rank: the cache is then complete
        import torch.distributed as dist

        hashes = {}
        for r in mine:
            hashes.update(memo.subset(r.image, r.liver_mask))
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (failures, hashes))
        for their_failures, their_hashes in gathered:
            failures.update(their_failures)
            memo.update(their_hashes)
    if get_rank() == 0 or not shard:
        memo.save()
    return failures


def _prepare_one(record: PatientRecord, cfg: PreprocessConfig) -> tuple[object | None, str | None, float]:
    """Worker task: `prepare_ct` of one patient; return (LiverSlices or None, error text or None, seconds)."""
    from .slices import prepare_ct

    start = time.perf_counter()
    try:
        return prepare_ct(record.image, record.liver_mask, cfg), None, time.perf_counter() - start
    except Exception as exc:  # reported by the caller; the other patients go on
        log.debug("patient %s failed", record.patient_id, exc_info=not isinstance(exc, InputError))
        return None, _error_text(exc), time.perf_counter() - start


def prepared_patients(records: list[PatientRecord], cfg: PreprocessConfig,
                      workers: int | None = None) -> Iterator[tuple[PatientRecord, object | None, str | None, float]]:
    """Yield (record, LiverSlices or None, error or None, preprocessing seconds) in manifest order.

    Up to `workers` patients (0: one per core; None or "auto": as `build_entries`) are preprocessed ahead in the process pool
    while the caller works on the current one (e.g. the model scores it), so a batch run costs
    about max(preprocessing / workers, model time) per patient. One worker: in this process.
    """
    workers = parse_workers(workers)
    if workers is None and records:  # auto: time the first patient here, then decide
        first = _prepare_one(records[0], cfg)
        yield (records[0], *first)
        records, cores = records[1:], default_workers()
        if records:
            log.info("%s", auto_note(len(records), first[2], cores))
        workers = cores if pool_pays(len(records), first[2], cores) else 1
    workers = min(workers or 1, len(records))
    if workers <= 1:
        for record in records:
            yield (record, *_prepare_one(record, cfg))
        return
    pool = make_pool(workers)
    try:
        pending: list[tuple[PatientRecord, Future]] = []
        todo = iter(records)
        for record in todo:  # fill the window: `workers` running plus one ready
            pending.append((record, pool.submit(_prepare_one, record, cfg)))
            if len(pending) > workers:
                break
        while pending:
            record, fut = pending.pop(0)
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_prepare_one, nxt, cfg)))
            try:
                yield (record, *fut.result())
            except BrokenProcessPool:
                yield record, None, "a preprocessing process died (out of memory? try fewer workers)", 0.0
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
