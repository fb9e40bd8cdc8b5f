"""`wsp-cirrhosis predict`: one CT, or a cohort CSV, -> result files, with progress for people or programs.

The model work is `scoring.LoadedModel.predict`; this file adds the command around it: output
folders built in a hidden sibling and moved into place at the end, result lines, batch mode, and
`--progress` (a bar, log lines, or the JSON-lines protocol on stdout that the Slicer module reads;
README "JSON-lines progress"). SIGTERM cancels cleanly: no output folder is left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator

from ..data.automask import check_mask_source
from ..errors import Cancelled, ConfigError, WSPError
from .scoring import CancelFn, PatientPrediction, ProgressFn, check_cancel, load_model

if TYPE_CHECKING:
    from ..config import PredictConfig

log = logging.getLogger("wsp_cirrhosis")

# Files of one patient's output folder, as named in the "done" event.
PATIENT_FILES = {"prediction_json": "prediction.json", "slices_csv": "slices.csv", "curve_png": "curve.png"}
# Message prefix -> stage of a "progress" event (the messages come from LoadedModel.predict).
_STAGES = (("reading", "read"), ("preprocessing", "preprocess"), ("model", "model"), ("P(", "model"),
           ("loading", "load"), ("writing", "write"))
TERMINATED = "terminated (SIGTERM); no output was written"


def run_predict(cfg: "PredictConfig", progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> int:
    """`wsp-cirrhosis predict`: one CT -> OUT/{slices.csv, prediction.json, curve.png};
    a cohort CSV -> OUT/<patient_id>/... + OUT/summary.csv.

    Args:
        cfg: the command's flags; `cfg.progress` picks how progress is shown when `progress` is None.
        progress: progress(fraction, message) instead of the `cfg.progress` display.
        cancel: polled before each stage and batch; True raises Cancelled.

    Returns:
        0 on success; 1 when some patients of a batch failed (listed in summary.csv).

    Raises:
        WSPError: bad input, bundle or flags (exit 2); Cancelled on cancel or SIGTERM (exit 130).
    """
    jsonl = cfg.progress == "jsonl"
    if progress is None:
        from ..progress import progress_callback

        progress = progress_callback(cfg.progress, stage_of)
    with terminate_as_cancel(cancel) as cancel:
        if jsonl:  # pid: the process doing the work (a launcher such as PythonSlicer may sit in between)
            from .. import __version__
            from ..progress import PROTOCOL_VERSION, emit_event

            emit_event("start", protocol=PROTOCOL_VERSION, command="predict", pid=os.getpid(), version=__version__)
        if cfg.ct.suffix.lower() == ".csv":
            return _run_batch(cfg, progress, cancel, jsonl)
        return _run_single(cfg, progress, cancel, jsonl)


def _run_single(cfg: "PredictConfig", progress: ProgressFn, cancel: CancelFn | None, jsonl: bool) -> int:
    from ..files import check_output_dir, staged_output_dir
    from .report import write_patient_outputs

    check_output_dir(cfg.out, cfg.force)
    if cfg.liver_mask is None:
        check_mask_source(cfg.auto_mask)
    progress(0.0, "loading the model")
    loaded = load_model(cfg.model, cfg.device, cfg.bf16)
    saliency = _saliency_writer(cfg, loaded)
    with staged_output_dir(cfg.out, cfg.force) as stage:
        if saliency is None:
            prediction = loaded.predict(cfg.ct, cfg.liver_mask, batch_size=cfg.batch_size,
                                        liver_label=cfg.liver_label, auto_mask=cfg.auto_mask, progress=progress,
                                        cancel=cancel)
        else:
            prediction, liver, image = _predict_keeping_slices(loaded, cfg, cfg.ct, cfg.liver_mask, progress, cancel)
        check_cancel(cancel)
        files = dict(PATIENT_FILES)
        if saliency is not None:
            progress(0.97, "model: saliency maps (Grad-CAM)")
            files.update(saliency(stage, liver, image, prediction))
            del liver, image
        progress(1.0, "writing the result files")
        write_patient_outputs(stage, prediction, image_path=cfg.ct, mask_path=cfg.liver_mask)
        check_cancel(cancel)
    _say(f"{result_line(prediction)}; wrote {cfg.out}", jsonl)
    if jsonl:
        from ..progress import emit_event

        emit_event("done", exit_code=0, out=str(cfg.out),
                   files={key: str(cfg.out / name) for key, name in files.items()},
                   **_result_fields(prediction))
    return 0


def _run_batch(cfg: "PredictConfig", progress: ProgressFn, cancel: CancelFn | None, jsonl: bool) -> int:
    from ..data.manifest import read_manifest
    from ..files import check_output_dir, staged_output_dir
    from ..progress import emit_event
    from .report import write_patient_outputs, write_summary_csv

    if cfg.liver_mask is not None:
        raise ConfigError("--liver-mask: not used with a cohort CSV; its liver_mask column gives each patient's mask")
    check_output_dir(cfg.out, cfg.force)
    records = read_manifest(cfg.ct)
    progress(0.0, "loading the model")
    loaded = load_model(cfg.model, cfg.device, cfg.bf16)
    saliency = _saliency_writer(cfg, loaded)
    rows: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    names: set[str] = set()
    with staged_output_dir(cfg.out, cfg.force) as stage, _prepared(cfg, loaded, records) as prepared:
        for i, (rec, liver, prep_error, prep_s) in enumerate(prepared):
            check_cancel(cancel)
            folder = folder_name(rec.patient_id, names)
            log.info("patient %d/%d: %s", i + 1, len(records), rec.patient_id)

            def sub_progress(fraction: float, message: str, i: int = i, pid: str = rec.patient_id) -> None:
                progress((i + fraction) / len(records), f"{message} [{pid}]")

            try:
                if prep_error is not None:  # the worker's message, as the in-process path would word it
                    raise WSPError(prep_error)
                image = None
                if liver is not None:  # preprocessed by a worker process while the model ran before
                    sub_progress(0.1, "preprocessing done in a worker process")
                    prediction = loaded.predict_slices(liver, batch_size=cfg.batch_size, progress=sub_progress,
                                                       cancel=cancel, mask_name=str(rec.liver_mask),
                                                       timings={"load_model_s": loaded.load_s, "preprocess_s": prep_s})
                    if saliency is not None:  # the CT's grid, for the map; its slices came from the worker
                        from ..data.images import read_image

                        image = read_image(rec.image)
                elif saliency is None:
                    prediction = loaded.predict(rec.image, rec.liver_mask, batch_size=cfg.batch_size,
                                                liver_label=cfg.liver_label, auto_mask=cfg.auto_mask,
                                                progress=sub_progress, cancel=cancel)
                else:
                    prediction, liver, image = _predict_keeping_slices(loaded, cfg, rec.image, rec.liver_mask,
                                                                       sub_progress, cancel)
                if saliency is not None:
                    saliency(stage / folder, liver, image, prediction)
                del liver, image
                write_patient_outputs(stage / folder, prediction, image_path=rec.image, mask_path=rec.liver_mask)
            except Cancelled:
                raise
            except Exception as exc:  # one bad patient must not stop the cohort; bugs keep their traceback in -v
                message = str(exc) if isinstance(exc, WSPError) else f"{type(exc).__name__}: {exc}"
                log.debug("patient %s failed", rec.patient_id, exc_info=not isinstance(exc, WSPError))
                log.warning("patient %s failed: %s", rec.patient_id, message)
                failed.append((rec.patient_id, message))
                rows.append({"patient_id": rec.patient_id, "error": message})
                if jsonl:
                    emit_event("patient", index=i, patient_id=rec.patient_id, folder=folder, error=message)
                continue
            rows.append({"patient_id": rec.patient_id, "probability": prediction.probability,
                         "label": prediction.label, "threshold": prediction.threshold,
                         "n_slices": prediction.n_slices, "error": ""})
            _say(f"{rec.patient_id}: {result_line(prediction)}", jsonl)
            if jsonl:
                emit_event("patient", index=i, patient_id=rec.patient_id, folder=folder, **_result_fields(prediction))
        write_summary_csv(rows, stage / "summary.csv")
        check_cancel(cancel)
    code = 1 if failed else 0
    if failed:
        listed = "\n  ".join(f"{pid}: {msg}" for pid, msg in failed)
        print(f"wsp-cirrhosis predict: {len(failed)} of {len(records)} patient(s) failed "
              f"(see {cfg.out / 'summary.csv'}):\n  {listed}", file=sys.stderr)
    else:
        _say(f"{len(records)} patient(s) predicted; wrote {cfg.out}", jsonl)
    if jsonl:
        emit_event("done", exit_code=code, out=str(cfg.out), files={"summary_csv": str(cfg.out / "summary.csv")},
                   n_patients=len(records), n_failed=len(failed))
    return code


@contextlib.contextmanager
def _prepared(cfg: "PredictConfig", loaded: Any, records: list) -> Iterator[Iterator[tuple[Any, Any, str | None, float]]]:
    """(record, LiverSlices or None, error or None, seconds) per patient, in manifest order.

    With more than one worker (`--workers`, 0 = one per core, auto = when it pays), data.pool.prepared_patients reads and
    preprocesses the next patients in worker processes while the model scores the current one; the
    slices are the same `prepare_ct` output, so the results equal the one-process path. With one
    worker, LiverSlices is None and LoadedModel.predict does everything here, as before.
    """
    from ..data.pool import parse_workers, prepared_patients

    workers = parse_workers(cfg.workers)
    if workers is not None:
        workers = min(workers, len(records))
    if len(records) <= 1 or workers == 1:
        yield ((rec, None, None, 0.0) for rec in records)
        return
    prep = loaded.bundle.preprocess
    if cfg.liver_label is not None:
        prep = dataclasses.replace(prep, liver_label=cfg.liver_label)
    if workers is not None:
        log.info("batch predict: %d preprocessing worker process(es)", workers)
    gen = prepared_patients(records, prep, workers)
    try:
        yield gen
    finally:
        gen.close()  # stops the pool, also on cancel or error


def _predict_keeping_slices(loaded: Any, cfg: "PredictConfig", ct: Any, mask: Any, progress: ProgressFn,
                            cancel: CancelFn | None) -> tuple[PatientPrediction, Any, Any]:
    """`loaded.predict`, keeping the prepared liver slices and the CT as read for --saliency, so
    the CT is preprocessed once. Costs memory: the CT volume stays alive while the model runs
    (about 100 MB for 512 x 512 x 200 int16), besides the slices (S x 224 x 224 float32)."""
    timings = {"load_model_s": loaded.load_s}
    start = time.perf_counter()
    liver, image, mask_path = loaded.prepare(ct, mask, liver_label=cfg.liver_label, auto_mask=cfg.auto_mask,
                                             progress=progress, cancel=cancel, timings=timings)
    prediction = loaded.predict_slices(liver, batch_size=cfg.batch_size, progress=progress, cancel=cancel,
                                       timings=timings, mask_name=str(mask_path or "liver mask"), start=start)
    return prediction, liver, image


def _saliency_writer(cfg: "PredictConfig", loaded: Any) -> Any:
    """None without --saliency; else a function (folder, liver slices, CT, prediction) -> files
    written (saliency.py), after checking that the model has conv layers and a mask is given."""
    if not getattr(cfg, "saliency", False):
        return None
    from .saliency import check_saliency_supported, write_saliency

    check_saliency_supported(loaded.model)
    if cfg.liver_mask is None and cfg.ct.suffix.lower() != ".csv":
        raise ConfigError("--saliency: needs --liver-mask (the automatic mask is not kept)")

    def write(folder: Any, liver: Any, image: Any, prediction: Any) -> dict[str, str]:
        return write_saliency(folder, loaded, liver, image, prediction, batch_size=cfg.batch_size)

    return write


def stage_of(message: str) -> str:
    """The stage of a progress message: load, read, preprocess, model or write ("" when unknown)."""
    return next((stage for prefix, stage in _STAGES if message.startswith(prefix)), "")


@contextlib.contextmanager
def terminate_as_cancel(cancel: CancelFn | None = None) -> Iterator[CancelFn]:
    """While inside, SIGTERM raises Cancelled (exit 130), so staged output folders are removed;
    yields the cancel check for LoadedModel.predict and this file's checkpoints: it raises
    Cancelled(SIGTERM) once SIGTERM has arrived, else asks `cancel` (None: never cancelled).

    Python's default SIGTERM action ends the process at once, which would leave the hidden
    staging folder behind. The handler's exception surfaces wherever the main thread happens to
    be, and code that swallows exceptions there (a __del__ method, logging's handleError, a
    library's broad `except`) would lose it and let the run finish: the yielded check keeps the
    news for the next checkpoint. Only the main thread can install handlers; elsewhere this
    installs nothing and only `cancel` is asked.
    """
    received = threading.Event()

    def check() -> bool:
        if received.is_set():
            raise Cancelled(TERMINATED)
        return cancel is not None and cancel()

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield check
        return

    def handler(signum: int, frame: Any) -> None:
        received.set()
        raise Cancelled(TERMINATED)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield check
    finally:
        signal.signal(signal.SIGTERM, previous)


def folder_name(patient_id: str, taken: set[str]) -> str:
    """A safe, unique folder name for a patient id (path separators and odd characters -> _)."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", patient_id).strip(".") or "patient"
    name, n = base, 1
    while name.lower() in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name.lower())
    return name


def result_line(p: PatientPrediction) -> str:
    """One line for people: probability, label, threshold, slices and model."""
    return (f"P({p.class_names[-1]}) = {p.probability:.3f} -> {p.label_name} "
            f"(threshold {p.threshold:.3f}, {p.n_slices} slices, model {p.model_name})")


def _result_fields(p: PatientPrediction) -> dict[str, Any]:
    return {"probability": p.probability, "label": p.label, "label_name": p.label_name,
            "threshold": p.threshold, "n_slices": p.n_slices}


def _say(text: str, jsonl: bool) -> None:
    """A result line: stdout for people, stderr when stdout carries the JSON-lines protocol."""
    print(text, file=sys.stderr if jsonl else sys.stdout, flush=True)
