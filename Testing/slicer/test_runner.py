"""runner.BackgroundJob without Qt: the worker thread, progress hand-off, cancel and errors.

In Slicer a QTimer calls `poll()`; here the test calls it (through `wait`), which is the same
code path minus the timer.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "WSPCirrhosis"))

from WSPCirrhosisLib.runner import BackgroundJob  # noqa: E402
from wsp_cirrhosis.errors import Cancelled  # noqa: E402


def run_job(work):
    events, done = [], []
    job = BackgroundJob(work, onProgress=lambda f, m: events.append((f, m, threading.current_thread().name)),
                        onDone=lambda r, e: done.append((r, e, threading.current_thread().name)))
    job.start(autoPoll=False)
    assert job.wait(timeout=30)
    return job, events, done


def test_result_and_progress_reach_the_polling_thread_in_order():
    def work(progress, cancel):
        for i in range(5):
            progress(i / 4, f"batch {i}")
        return "scores"

    job, events, done = run_job(work)
    assert [m for _, m, _ in events] == [f"batch {i}" for i in range(5)]
    assert [f for f, _, _ in events] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert done == [("scores", None, "MainThread")]
    assert {thread for *_, thread in events} == {"MainThread"}, "callbacks run where poll() runs"
    assert not job.running and job.poll(), "done is delivered once, poll stays True"
    assert len(done) == 1


def test_cancel_request_stops_the_worker_with_cancelled():
    started = threading.Event()

    def work(progress, cancel):
        started.set()
        while not cancel():
            threading.Event().wait(0.005)
        raise Cancelled("prediction cancelled")

    job = BackgroundJob(work, onDone=lambda r, e: outcome.append(e))
    outcome = []
    job.start(autoPoll=False)
    assert started.wait(10)
    assert job.running and not job.cancelRequested
    job.requestCancel()
    assert job.wait(timeout=10)
    assert job.cancelRequested and isinstance(outcome[0], Cancelled)


def test_worker_exception_is_handed_over_not_lost():
    def work(progress, cancel):
        raise ValueError("bad slice")

    _, _, done = run_job(work)
    result, error, _ = done[0]
    assert result is None and isinstance(error, ValueError) and str(error) == "bad slice"


def test_a_job_runs_only_once():
    job, _, _ = run_job(lambda progress, cancel: 1)
    with pytest.raises(RuntimeError, match="runs once"):
        job.start(autoPoll=False)


# --- RunControls with stand-in widgets (PythonQt exists only inside Slicer) -------------------


class FakeTimer:
    """qt.QTimer.singleShot stand-in: callbacks wait until the test fires them."""

    pending: list = []

    @classmethod
    def singleShot(cls, msec, callback):
        cls.pending.append(callback)

    @classmethod
    def fire_all(cls, limit=10000):
        for _ in range(limit):
            if not cls.pending:
                return
            cls.pending.pop(0)()
        raise AssertionError("timer chain never ended")


class Widget:
    def __init__(self, text=""):
        self.text, self.toolTip, self.enabled, self.shown = text, "", False, None
        self.value, self.format, self.range, self.lines = 0, "", None, []

    def setRange(self, lo, hi): self.range = (lo, hi)
    def setValue(self, value): self.value = value
    def setFormat(self, text): self.format = text
    def show(self): self.shown = True
    def hide(self): self.shown = False
    def appendPlainText(self, line): self.lines.append(line)
    def ensureCursorVisible(self): pass


@pytest.fixture
def controls(monkeypatch):
    import types

    from WSPCirrhosisLib.runner import RunControls

    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(QTimer=FakeTimer))
    FakeTimer.pending = []
    return RunControls(Widget("Apply"), Widget(), Widget())


def test_apply_turns_into_cancel_while_a_job_runs_and_back(controls):
    release = threading.Event()
    outcome = []

    def work(progress, cancel):
        progress(0.5, "model: batch 1/2 (40 slices)")
        release.wait(10)
        return 0.7

    job = BackgroundJob(work, onProgress=controls.onProgress,
                        onDone=lambda r, e: (outcome.append((r, e)), controls.finish(f"done {r}", completed=True)))
    controls.start(job)
    assert controls.running and controls.applyButton.text == "Cancel" and controls.progressBar.shown
    release.set()
    FakeTimer.fire_all()
    assert outcome == [(0.7, None)]
    assert not controls.running and controls.applyButton.text == "Apply" and controls.applyButton.enabled
    assert controls.progressBar.value == 1000 and controls.progressBar.shown is False
    assert any("batch 1/2" in line for line in controls.logBox.lines) and controls.logBox.lines[-1].endswith("done 0.7")


def test_cancel_button_requests_cancel_and_disables_itself(controls):
    def work(progress, cancel):
        while not cancel():
            threading.Event().wait(0.005)
        raise Cancelled("prediction cancelled")

    errors = []
    job = BackgroundJob(work, onDone=lambda r, e: (errors.append(e), controls.finish("Cancelled")))
    controls.start(job)
    controls.cancel()
    assert job.cancelRequested and controls.applyButton.enabled is False
    FakeTimer.fire_all()
    assert isinstance(errors[0], Cancelled) and controls.applyButton.text == "Apply"
