"""Background run of one prediction: worker thread, progress, Apply <-> Cancel, capped log box.

The worker thread only computes (SimpleITK images in, a prediction out); every MRML and Qt call
stays on the main thread, which polls a queue with a QTimer. `BackgroundJob` itself needs no Qt
(`poll()` can be called by hand), so its thread, cancel and error hand-off are testable anywhere.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from typing import Any, Callable

POLL_INTERVAL_MS = 50
# Neither CTK nor Slicer enables PythonQt's thread support (no GIL release around the Qt event
# loop, as far as their sources show; not measured inside Slicer), so a Python worker may only
# advance while the main thread runs Python. Each poll therefore sleeps briefly, which releases
# the GIL; inside torch operators the worker runs without the GIL anyway.
GIL_YIELD_S = 0.015

WorkFn = Callable[[Callable[[float, str], None], Callable[[], bool]], Any]


class BackgroundJob:
    """Run `work(progress, cancel)` in a daemon thread and hand its events to the main thread.

    Args:
        work: called in the worker as work(progress, cancel); its return value is the result.
        onProgress: onProgress(fraction, message), called from `poll()` (main thread).
        onDone: onDone(result, error), called once from `poll()`; error is None on success.
    """

    def __init__(self, work: WorkFn, onProgress: Callable[[float, str], None] | None = None,
                 onDone: Callable[[Any, BaseException | None], None] | None = None) -> None:
        self._work = work
        self._onProgress = onProgress
        self._onDone = onDone
        self._events: queue.Queue = queue.Queue()
        self._cancelEvent = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False
        self.startTime = 0.0

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._finished

    @property
    def cancelRequested(self) -> bool:
        return self._cancelEvent.is_set()

    def start(self, autoPoll: bool = True) -> None:
        """Start the worker; with `autoPoll` a QTimer calls `poll()` until the job is done."""
        if self._thread is not None:
            raise RuntimeError("a BackgroundJob runs once")
        self.startTime = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="WSPCirrhosisWorker", daemon=True)
        self._thread.start()
        if autoPoll:
            self._schedulePoll()

    def requestCancel(self) -> None:
        """Ask the worker to stop at its next check (between model batches)."""
        self._cancelEvent.set()

    def poll(self) -> bool:
        """Deliver queued progress and, once, the result; return True when the job is over."""
        while True:
            try:
                kind, payload = self._events.get_nowait()
            except queue.Empty:
                return self._finished
            if kind == "progress":
                if self._onProgress is not None:
                    self._onProgress(*payload)
            else:
                self._finished = True
                if self._onDone is not None:
                    self._onDone(*payload)
                return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is over, delivering its events here; False on timeout."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while not self.poll():
            if deadline is not None and time.perf_counter() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _run(self) -> None:
        def progress(fraction: float, message: str) -> None:
            self._events.put(("progress", (float(fraction), str(message))))

        try:
            result = self._work(progress, self._cancelEvent.is_set)
        except BaseException as exc:  # handed to the main thread, which shows or re-raises it
            logging.debug("WSPCirrhosis worker failed:\n%s", traceback.format_exc())
            self._events.put(("done", (None, exc)))
        else:
            self._events.put(("done", (result, None)))

    def _schedulePoll(self) -> None:
        import qt

        def tick() -> None:
            time.sleep(GIL_YIELD_S)
            try:
                done = self.poll()
            except Exception:  # a failing callback must not leave the timer chain dead silently
                logging.exception("WSPCirrhosis: error while handling background results")
                done = True
            if not done:
                qt.QTimer.singleShot(POLL_INTERVAL_MS, tick)

        qt.QTimer.singleShot(POLL_INTERVAL_MS, tick)


class RunControls:
    """The widgets of a run: Apply turns into Cancel, a progress bar, a log box.

    Args:
        applyButton: QPushButton; its text is swapped while a job runs.
        progressBar: QProgressBar, hidden when idle.
        logBox: QPlainTextEdit (read-only; its maximumBlockCount caps the memory it uses).
    """

    PROGRESS_STEPS = 1000

    def __init__(self, applyButton, progressBar, logBox) -> None:
        self.applyButton = applyButton
        self.progressBar = progressBar
        self.logBox = logBox
        self.applyText = applyButton.text
        self.job: BackgroundJob | None = None
        self.progressBar.setRange(0, self.PROGRESS_STEPS)
        self.progressBar.hide()

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def start(self, job: BackgroundJob) -> None:
        """Show the job's progress and turn Apply into Cancel until it ends."""
        self.job = job
        self.applyButton.text = "Cancel"
        self.applyButton.toolTip = "Stop the prediction after the current batch of slices"
        self.applyButton.enabled = True
        self.progressBar.setValue(0)
        self.progressBar.setFormat("starting %p%")
        self.progressBar.show()
        job.start()

    def cancel(self) -> None:
        if self.running:
            self.job.requestCancel()
            self.applyButton.enabled = False
            self.progressBar.setFormat("cancelling... %p%")
            self.log("Cancel requested: stopping after the current batch")

    def onProgress(self, fraction: float, message: str) -> None:
        self.progressBar.setValue(int(round(fraction * self.PROGRESS_STEPS)))
        self.progressBar.setFormat(f"{message.replace('%', '%%')} %p%")
        self.log(message)

    def finish(self, message: str, completed: bool = False) -> None:
        """Back to idle: Apply again, progress bar (full when `completed`) hidden after a pause."""
        import qt

        if completed:
            self.progressBar.setValue(self.PROGRESS_STEPS)
        self.applyButton.text = self.applyText
        self.applyButton.enabled = True
        self.log(message)
        seconds = time.perf_counter() - self.job.startTime if self.job is not None else 0.0
        self.progressBar.setFormat(f"{message.replace('%', '%%')} ({seconds:.1f} s)")
        qt.QTimer.singleShot(1500, self.progressBar.hide)

    def log(self, message: str) -> None:
        logging.info("WSPCirrhosis: %s", message)
        self.logBox.appendPlainText(time.strftime("%H:%M:%S ") + message)
        self.logBox.ensureCursorVisible()
