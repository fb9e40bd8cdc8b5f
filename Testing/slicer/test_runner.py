"""Apply <-> Cancel, progress bar and clicks around a real child process, without Qt.

PythonQt exists only inside Slicer, so the widgets are small stand-ins and qt.QTimer.singleShot
is a queue the test fires by hand; the jobs run real child processes (plain Python scripts that
speak the JSON-lines protocol), polled by hand as Slicer 5.10's QTimer would.
"""

from __future__ import annotations

import json
import sys
import textwrap
import types
from pathlib import Path

import pytest

# First, before WSPCirrhosisLib: slicer-core's package __init__ imports every module of each
# "slicer" folder on sys.path, this Testing/slicer folder included.
pytest.importorskip("slicer", reason="slicer-core is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "WSPCirrhosis"))

from WSPCirrhosisLib.job import PredictionJob  # noqa: E402
from WSPCirrhosisLib.process import JobState  # noqa: E402
from WSPCirrhosisLib.runner import HIDE_PROGRESS_AFTER_MS, RunControls  # noqa: E402


class FakeTimer:
    """qt.QTimer.singleShot stand-in: callbacks wait until the test fires them."""

    pending: list = []

    @classmethod
    def singleShot(cls, msec, callback):
        cls.pending.append((msec, callback))

    @classmethod
    def fire_all(cls):
        while cls.pending:
            cls.pending.pop(0)[1]()


class Widget:
    def __init__(self, text=""):
        self.text, self.toolTip, self.enabled, self.shown = text, "", True, None
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
    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(QTimer=FakeTimer))
    FakeTimer.pending = []
    return RunControls(Widget("Apply"), Widget(), Widget())


def child_job(tmp_path, script: str, controls, outcomes) -> PredictionJob:
    """A job whose child is `python -c script` (the protocol written by hand)."""
    import slicer

    scene = slicer.vtkMRMLScene()  # real and empty: these children return no result
    return PredictionJob(scene, None, None, workDir=tmp_path / "work",
                         command=[sys.executable, "-c", textwrap.dedent(script)], extraEnv={},
                         onProgress=controls.onProgress, onLog=controls.log, onStarted=controls.onStarted,
                         onFinished=lambda outcome: (outcomes.append(outcome), controls.finish(outcome.message)))


SLOW_CHILD = """
    import json, os, sys, time
    print(json.dumps({"event": "start", "pid": os.getpid()}), flush=True)
    print(json.dumps({"event": "progress", "fraction": 0.25, "stage": "model", "message": "model: batch 1/4"}), flush=True)
    time.sleep(60)
"""


def wait_for(job, predicate, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        job.handle.poll()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_double_click_on_apply_does_not_cancel_the_run_it_started(controls, tmp_path):
    outcomes = []
    job = child_job(tmp_path, SLOW_CHILD, controls, outcomes)
    controls.start(job)
    assert controls.applyButton.text == "Cancel" and controls.applyButton.enabled is False
    assert controls.starting and controls.cancel() is False, "a click while starting is ignored"
    wait_for(job, lambda: job.state == JobState.RUNNING)
    assert controls.applyButton.enabled is True, "once the child speaks, the button cancels"
    wait_for(job, lambda: controls.progressBar.value == 250)
    assert controls.cancel() is True and controls.applyButton.enabled is False
    assert job.handle.wait(30)
    assert [o.state for o in outcomes] == [JobState.CANCELLED]
    assert controls.applyButton.text == "Apply" and controls.applyButton.enabled
    assert any("batch 1/4" in line for line in controls.logBox.lines)
    assert not (tmp_path / "work").exists(), "the run's folder is removed"


def test_hiding_the_bar_of_a_finished_run_spares_the_next_run(controls, tmp_path):
    outcomes = []
    quick = 'import json; print(json.dumps({"event": "error", "message": "no liver", "exit_code": 2})); raise SystemExit(2)'
    first = child_job(tmp_path / "1", quick, controls, outcomes)
    controls.start(first)
    assert first.handle.wait(30)
    assert outcomes[0].state == JobState.FAILED and outcomes[0].message == "no liver"
    assert outcomes[0].detail is None, "an expected error carries no detail (Slicer would show 'None')"
    assert [msec for msec, _ in FakeTimer.pending] == [HIDE_PROGRESS_AFTER_MS]
    second = child_job(tmp_path / "2", SLOW_CHILD, controls, outcomes)
    controls.start(second)  # within the 1.5 s of the first run's delayed hide
    FakeTimer.fire_all()
    assert controls.progressBar.shown is True, "the first run's timer must not hide the second run's bar"
    wait_for(second, lambda: second.state == JobState.RUNNING)
    controls.cancel()
    assert second.handle.wait(30)
    FakeTimer.fire_all()
    assert controls.progressBar.shown is False


def test_a_crash_shows_the_last_log_lines_and_writes_nothing(controls, tmp_path):
    outcomes = []
    crash = """
        import json, os, sys
        print(json.dumps({"event": "start", "pid": os.getpid()}), flush=True)
        print("loading the model", file=sys.stderr, flush=True)
        raise MemoryError("CUDA out of memory")
    """
    job = child_job(tmp_path, crash, controls, outcomes)
    controls.start(job)
    assert job.handle.wait(30)
    (outcome,) = outcomes
    assert outcome.state == JobState.FAILED and "exit code 1" in outcome.message
    assert "MemoryError: CUDA out of memory" in outcome.detail and "loading the model" in outcome.detail
    assert outcome.result is None and not (tmp_path / "work").exists()


def test_protocol_lines_and_log_lines_are_told_apart():
    from WSPCirrhosisLib.process import ProtocolReader

    reader = ProtocolReader(tailLines=2)
    lines = ['{"event": "start", "pid": 42}', "21:00:01 WARNING slow disk", "{not json", "[1, 2]",
             json.dumps({"event": "done", "exit_code": 0, "files": {}})]
    kinds = [(reader.feed(line) or {}).get("event") for line in lines]
    assert kinds == ["start", None, None, None, "done"]
    assert reader.workerPid == 42 and list(reader.tail) == ["{not json", "[1, 2]"]
