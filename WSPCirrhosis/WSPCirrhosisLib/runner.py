"""The Qt side of a run: launching the child process, and Apply <-> Cancel, progress bar, log box.

The model runs in its own process (job.py, process.py): Slicer's main thread holds Python's GIL
while its event loop idles, so a worker thread would only compute in short gaps. Here:
`launch` starts the child with slicer.util.launchConsoleProcess(blocking=False) where Slicer
has it (5.12+), or with a reader thread + queue + QTimer (5.10); either way the job's callbacks
run on the main thread. `RunControls` only touches the widgets it is given, so it is testable
with stand-ins.
"""

from __future__ import annotations

import inspect
import logging
import time
from types import SimpleNamespace

POLL_INTERVAL_MS = 100
HIDE_PROGRESS_AFTER_MS = 1500


def launch(command: list, extraEnv: dict, onLine, onExit):
    """Start the child; onLine(line) and onExit(returnCode) are called on the main thread.

    Returns a handle with .proc (the Popen) and .ownProcessGroup (whether the child leads its
    own process group, so that cancel may signal the whole group).
    """
    import slicer

    launcher = getattr(slicer.util, "launchConsoleProcess", None)
    if launcher is not None and "blocking" in inspect.signature(launcher).parameters:  # Slicer 5.12+
        proc = launcher(command, useStartupEnvironment=False, updateEnvironment=extraEnv, blocking=False,
                        logCallback=onLine, completedCallback=onExit)
        return SimpleNamespace(proc=proc, ownProcessGroup=False)
    from .process import PopenLauncher

    handle = PopenLauncher(command, extraEnv, onLine, onExit)
    _pollUntilDone(handle)
    return handle


def _pollUntilDone(handle) -> None:
    import qt

    def tick() -> None:
        try:
            done = handle.poll()
        except Exception:  # a failing callback must not leave the timer chain dead silently
            logging.exception("WSPCirrhosis: error while handling the prediction process output")
            done = False
        if not done:
            qt.QTimer.singleShot(POLL_INTERVAL_MS, tick)

    qt.QTimer.singleShot(0, tick)


def killLater(job, delayS: float) -> None:
    """Force the child down `delayS` after a cancel if it is still alive."""
    import qt

    qt.QTimer.singleShot(int(delayS * 1000), job.killIfStillRunning)


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
        self.job = None
        self._runNumber = 0  # a delayed hide belongs to one run: it must not hide the next one's bar
        self.progressBar.setRange(0, self.PROGRESS_STEPS)
        self.progressBar.hide()

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    @property
    def starting(self) -> bool:
        from .process import JobState

        return self.job is not None and self.job.state == JobState.STARTING

    def start(self, job) -> None:
        """Show the job's progress and turn Apply into Cancel (enabled once the child speaks)."""
        self.job = job
        self._runNumber += 1
        self.applyButton.text = "Cancel"
        self.applyButton.toolTip = "Stop the prediction; nothing is written"
        self.progressBar.setValue(0)
        self.progressBar.setFormat("starting %p%")
        self.progressBar.show()
        self.applyButton.enabled = False  # a double click on Apply must not cancel the run it started
        job.start()

    def onStarted(self) -> None:
        """The child has spoken: from now on the button cancels it."""
        self.applyButton.enabled = True

    def cancel(self) -> bool:
        """Terminate the running job; ignored while it is still starting."""
        if not self.running or not self.job.cancel():
            return False
        self.applyButton.enabled = False
        self.progressBar.setFormat("cancelling... %p%")
        self.log("Cancel requested: stopping the prediction process")
        return True

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
        runNumber = self._runNumber
        qt.QTimer.singleShot(HIDE_PROGRESS_AFTER_MS, lambda: self._hideAfterRun(runNumber))

    def _hideAfterRun(self, runNumber: int) -> None:
        if runNumber == self._runNumber and not self.running:
            self.progressBar.hide()

    def log(self, message: str) -> None:
        logging.info("WSPCirrhosis: %s", message)
        self.logBox.appendPlainText(time.strftime("%H:%M:%S ") + message)
        self.logBox.ensureCursorVisible()
