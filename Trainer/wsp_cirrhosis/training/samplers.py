"""Samplers and batch loading: one slice per patient for pretraining, balanced slices (or patient
bags, for the position-aware patient heads) for finetuning.

Sampling is a pure function of (seed, epoch): every rank computes the same global batches and
keeps its own contiguous part (rank r of K holds rows ``[r * B / K, (r + 1) * B / K)``, the
layout ``contrastive_loss`` expects), so a resumed or a multi-process run draws exactly the
batches of an uninterrupted single-process run. Batches are assembled from the memory-mapped
slice caches with numpy in a small prefetch thread (no DataLoader workers).
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class Batch:
    """A batch of slices on the host.

    Attributes:
        images: (B, H, W) float32 slices in [0, 1].
        labels: (B,) int64 weak labels y (-1 where unknown).
        histo_labels: (B,) int64 strong labels (-1 where unknown).
        positions: (B,) float32 slice positions d in [0, 1], 0 = most inferior liver slice.
        patients: (B,) int64 index of each slice's patient in the cohort list.
    """

    images: np.ndarray
    labels: np.ndarray
    histo_labels: np.ndarray
    positions: np.ndarray
    patients: np.ndarray


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch)])


def _rank_rows(batch_size: int, rank: int, world_size: int) -> slice:
    if batch_size % world_size:
        raise ConfigError(f"--batch-size {batch_size} must be a multiple of the number of processes ({world_size})")
    local = batch_size // world_size
    return slice(rank * local, (rank + 1) * local)


class PatientSampler:
    """Pretraining batches: one slice per patient, patients drawn class-balanced on the weak label.

    Each batch draws ``batch_size`` distinct patients without replacement, patient p with
    probability proportional to 1 / (number of patients of p's class), then one slice uniformly
    within each. An epoch is ``steps_per_epoch`` independent batches: pretraining passes
    ceil(slices per epoch / batch size), the paper's fixed 10,000-slice epoch (method.md); the
    default ``ceil(n_patients / batch_size)`` sees each patient about once.

    Args:
        labels: (P,) weak label per patient; -1 (or all equal) for no balancing.
        n_slices: (P,) number of slices per patient (each >= 1).
        batch_size: global batch size (over all ranks), <= P.
        seed: sampling seed.
        rank: this process's rank.
        world_size: number of processes; must divide ``batch_size``.
        steps_per_epoch: batches per epoch (None: ``ceil(n_patients / batch_size)``).
        position_groups: 0 draws each patient's slice uniformly. G > 0 splits every batch into G
            groups of rows; group g draws one position u_g uniformly in [g / G, (g + 1) / G) and
            each of its patients takes the slice at relative index u_g (so same-label partners
            at close positions occur in every batch: the WSP kernel's positives).

    Raises:
        ConfigError: ``batch_size`` larger than the cohort or not divisible by ``world_size``.
    """

    def __init__(self, labels: Sequence[int], n_slices: Sequence[int], batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, steps_per_epoch: int | None = None,
                 position_groups: int = 0) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n_slices = np.asarray(n_slices, dtype=np.int64)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        n = len(self.labels)
        if batch_size > n:
            raise ConfigError(f"--batch-size {batch_size} exceeds the {n} patients of the cohort "
                              "(a batch holds one slice per patient); lower --batch-size")
        if (self.n_slices < 1).any():
            raise ConfigError("every patient needs at least one slice")
        self.rows = _rank_rows(batch_size, rank, world_size)
        _, inverse, counts = np.unique(self.labels, return_inverse=True, return_counts=True)
        weights = 1.0 / counts[inverse]
        self.probabilities = weights / weights.sum()
        self.steps_per_epoch = int(steps_per_epoch) if steps_per_epoch else math.ceil(n / batch_size)
        self.position_groups = int(position_groups)

    def epoch(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """This rank's (patient indices (b,), slice indices (b,)) for every batch of ``epoch``."""
        rng = _rng(self.seed, epoch)
        out = []
        for _ in range(self.steps_per_epoch):
            patients = rng.choice(len(self.labels), size=self.batch_size, replace=False, p=self.probabilities)
            if self.position_groups:
                g = self.position_groups
                group = np.arange(self.batch_size) * g // self.batch_size
                u = (np.arange(g) + rng.random(g)) / g
                slices = np.rint(u[group] * (self.n_slices[patients] - 1)).astype(np.int64)
            else:
                slices = rng.integers(0, self.n_slices[patients])
            out.append((patients[self.rows], slices[self.rows]))
        return out

    def state_dict(self) -> dict[str, int]:
        """Everything that determines the batches (they are a function of (seed, epoch))."""
        return {"seed": self.seed, "batch_size": self.batch_size, "world_size": self.world_size,
                "steps_per_epoch": self.steps_per_epoch, "position_groups": self.position_groups}


class SliceSampler:
    """Finetuning batches of (patient, slice) pairs, balanced on the histology label.

    Each epoch takes all slices of every patient, or ``slices_per_patient`` of them drawn
    without replacement, then oversamples the minority class (with replacement) to the size of
    the majority class, shuffles, and pads to whole batches by wrapping around. The epoch length
    depends only on the cohort, so the learning-rate schedule is known in advance.

    Args:
        labels: (P,) histology label per patient, 0 or 1.
        n_slices: (P,) number of slices per patient (each >= 1).
        batch_size: global batch size (over all ranks).
        seed: sampling seed.
        slices_per_patient: slices drawn per patient per epoch (None or 0: all slices).
        balance: oversample the minority class.
        rank: this process's rank.
        world_size: number of processes; must divide ``batch_size``.
    """

    def __init__(self, labels: Sequence[int], n_slices: Sequence[int], batch_size: int, seed: int,
                 slices_per_patient: int | None = None, balance: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n_slices = np.asarray(n_slices, dtype=np.int64)
        self.batch_size, self.seed, self.balance = batch_size, seed, balance
        self.per_patient = self.n_slices if not slices_per_patient else np.minimum(self.n_slices, slices_per_patient)
        self.rows = _rank_rows(batch_size, rank, world_size)
        counts = [int(self.per_patient[self.labels == c].sum()) for c in np.unique(self.labels)]
        total = max(counts) * len(counts) if balance else sum(counts)
        self.steps_per_epoch = max(1, math.ceil(total / batch_size))

    def epoch(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """This rank's (patient indices (b,), slice indices (b,)) for every batch of ``epoch``."""
        rng = _rng(self.seed, epoch)
        by_class: dict[int, list[np.ndarray]] = {}
        for p, (label, n, k) in enumerate(zip(self.labels, self.n_slices, self.per_patient)):
            chosen = np.arange(n) if k == n else np.sort(rng.choice(n, size=k, replace=False))
            by_class.setdefault(int(label), []).append(np.stack([np.full(k, p), chosen], axis=1))
        pools = [np.concatenate(by_class[c]) for c in sorted(by_class)]
        if self.balance:
            target = max(len(pool) for pool in pools)
            pools = [np.concatenate([pool, pool[rng.integers(0, len(pool), target - len(pool))]]) for pool in pools]
        pairs = np.concatenate(pools)[rng.permutation(sum(len(pool) for pool in pools))]
        need = self.steps_per_epoch * self.batch_size
        pairs = pairs[np.arange(need) % len(pairs)]
        batches = pairs.reshape(self.steps_per_epoch, self.batch_size, 2)[:, self.rows]
        return [(b[:, 0], b[:, 1]) for b in batches]

    def state_dict(self) -> dict[str, int]:
        """Everything that determines the batches (they are a function of (seed, epoch))."""
        return {"seed": self.seed, "batch_size": self.batch_size}


class BagSampler:
    """Patient-head fine-tuning batches: whole bags of ``bag_size`` slices of ``batch_size // bag_size`` patients.

    Each epoch lists every patient once, oversamples the minority histology class (with
    replacement) to the size of the majority, shuffles, and wraps around to whole batches. A bag
    is position-stratified: the patient's slices (in z order, d increasing) are cut into
    ``bag_size`` equal strata and one slice is drawn in each (with replacement when the patient
    has fewer slices than ``bag_size``), so every bag spans the whole liver height. Rows of a
    batch are patient-major (bag p holds rows ``p * bag_size .. (p + 1) * bag_size - 1``); a rank
    keeps whole bags.

    Raises:
        ConfigError: ``batch_size`` not a multiple of ``bag_size`` x the number of processes.
    """

    def __init__(self, labels: Sequence[int], n_slices: Sequence[int], batch_size: int, bag_size: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n_slices = np.asarray(n_slices, dtype=np.int64)
        if bag_size < 1 or batch_size % (bag_size * world_size):
            raise ConfigError(f"--batch-size {batch_size} must be a multiple of --bag-size {bag_size} x the number "
                              f"of processes ({world_size}): every process trains on whole patient bags")
        self.batch_size, self.bag_size, self.seed, self.world_size = batch_size, bag_size, seed, world_size
        self.patients_per_step = batch_size // bag_size
        self.rows = _rank_rows(batch_size, rank, world_size)
        counts = [int((self.labels == c).sum()) for c in np.unique(self.labels)]
        self.steps_per_epoch = max(1, math.ceil(max(counts) * len(counts) / self.patients_per_step))

    def bag(self, patient: int, rng: np.random.Generator) -> np.ndarray:
        """(bag_size,) slice indices of one position-stratified bag, increasing."""
        n, k = int(self.n_slices[patient]), self.bag_size
        lo = np.floor(np.arange(k) * n / k).astype(np.int64)
        hi = np.maximum(np.floor(np.arange(1, k + 1) * n / k).astype(np.int64), lo + 1)
        return np.minimum(lo + np.floor(rng.random(k) * (hi - lo)).astype(np.int64), n - 1)

    def epoch(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """This rank's (patient indices (b,), slice indices (b,)) for every batch of ``epoch``."""
        rng = _rng(self.seed, epoch)
        pools = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
        target = max(len(pool) for pool in pools)
        pools = [np.concatenate([pool, pool[rng.integers(0, len(pool), target - len(pool))]]) for pool in pools]
        order = np.concatenate(pools)[rng.permutation(target * len(pools))]
        order = order[np.arange(self.steps_per_epoch * self.patients_per_step) % len(order)]
        out = []
        for step in order.reshape(self.steps_per_epoch, self.patients_per_step):
            patients = np.repeat(step, self.bag_size)
            slices = np.concatenate([self.bag(int(p), rng) for p in step])
            out.append((patients[self.rows], slices[self.rows]))
        return out

    def state_dict(self) -> dict[str, int]:
        """Everything that determines the batches (they are a function of (seed, epoch))."""
        return {"seed": self.seed, "batch_size": self.batch_size, "bag_size": self.bag_size}


def load_batch(patients: Sequence[Any], patient_idx: np.ndarray, slice_idx: np.ndarray) -> Batch:
    """Copy the chosen slices out of the patients' memory-mapped caches.

    Args:
        patients: CachedPatient-like objects (``.slices`` (S, H, W) float32, ``.positions``
            (S,), ``.weak_label``, ``.histo_label``).
        patient_idx: (B,) int index into ``patients``.
        slice_idx: (B,) int slice index within each patient.

    Returns:
        The Batch (freshly allocated arrays, safe to hand to torch).
    """
    first = patients[int(patient_idx[0])].slices
    images = np.empty((len(patient_idx), *first.shape[1:]), dtype=np.float32)
    positions = np.empty(len(patient_idx), dtype=np.float32)
    for row, (p, s) in enumerate(zip(patient_idx.tolist(), slice_idx.tolist())):
        images[row] = patients[p].slices[s]
        positions[row] = patients[p].positions[s]
    label = lambda v: -1 if v is None else int(v)  # noqa: E731
    labels = np.array([label(patients[p].weak_label) for p in patient_idx.tolist()], dtype=np.int64)
    histo = np.array([label(patients[p].histo_label) for p in patient_idx.tolist()], dtype=np.int64)
    return Batch(images, labels, histo, positions, np.asarray(patient_idx, dtype=np.int64))


def prefetch(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate over ``items`` computed ahead in a background thread (numpy releases the GIL).

    Exceptions in the thread are re-raised in the caller; leaving the loop early stops the thread.
    """
    done = object()
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer
            put(exc)

    thread = threading.Thread(target=work, name="wsp-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
