"""Build slice-cache entries in parallel: a process pool on each machine, a share per torchrun rank.

Workers start from a fork server (a fresh interpreter that imported the preprocessing once), not
by forking a process whose torch / ITK thread pools may be running. Each worker uses one thread:
the pool is the parallelism, and entries are byte-identical whatever built them (prepare_ct is
per-voxel arithmetic; the hash memo is saved with sorted keys).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
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


def _init_worker() -> None:
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


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


def _completed(futures: dict[Future, PatientRecord]) -> Iterator[tuple[PatientRecord, dict, str | None, float]]:
    for fut in as_completed(futures):
        record = futures[fut]
        try:
            hashes, error, cpu = fut.result()
        except BrokenProcessPool:
            hashes, error, cpu = {}, "a preprocessing process died (out of memory? try fewer --workers)", 0.0
        except Exception as exc:  # e.g. a record that cannot be sent to the worker
            hashes, error, cpu = {}, _error_text(exc), 0.0
        yield record, hashes, error, cpu


def build_entries(records: list[PatientRecord], cfg: PreprocessConfig, cache_dir: Path, memo: "HashMemo",
                  workers: int) -> dict[str, str]:
    """Build the missing or stale entries of `records` with `workers` processes; return {patient_id: error}."""
    from .cache import build_entry, fresh_meta

    stale = [r for r in records if fresh_meta(r, cfg, cache_dir, memo, hash_inputs=False) is None]
    failures: dict[str, str] = {}
    if not stale:
        return failures
    workers = min(workers, len(stale))
    start, cpu = time.perf_counter(), 0.0
    if workers <= 1:
        cpu = -time.process_time()
        for record in track(stale, desc="preprocess"):
            try:
                build_entry(record, cfg, cache_dir, memo)
            except Exception as exc:  # reported with the others; -v keeps a bug's traceback
                log.debug("patient %s failed", record.patient_id, exc_info=not isinstance(exc, InputError))
                failures[record.patient_id] = _error_text(exc)
        cpu += time.process_time()
    else:
        pool = make_pool(workers)
        try:
            futures = {pool.submit(_build_one, r, cfg, cache_dir, memo.subset(r.image, r.liver_mask)): r for r in stale}
            for record, hashes, error, used in track(_completed(futures), total=len(futures),
                                                     desc=f"preprocess ({workers} workers)"):
                memo.update(hashes)
                cpu += used
                if error is not None:
                    log.warning("patient %s failed: %s", record.patient_id, error)
                    failures[record.patient_id] = error
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    log.info("preprocessed %d patient(s) with %d worker(s): %.1f s, %.1f CPU-s in preprocessing",
             len(stale), workers, time.perf_counter() - start, cpu)
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
    failures = build_entries(mine, cfg, cache_dir, memo, workers or default_workers())
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

    Up to `workers` patients (None/0: one per core) are preprocessed ahead in the process pool
    while the caller works on the current one (e.g. the model scores it), so a batch run costs
    about max(preprocessing / workers, model time) per patient. One worker: in this process.
    """
    workers = min(workers or default_workers(), len(records))
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
