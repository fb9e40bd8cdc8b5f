"""One Apply as a job: inputs written, child process launched, its lines followed, result read back.

Qt-free: the launcher is passed in (runner.launch in Slicer, process.PopenLauncher in tests),
and every callback runs on the thread that delivers the child's lines, which in Slicer is the
main thread, so result nodes are written there.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from pathlib import Path
from typing import Callable

from . import panel, process
from .process import JobState, Outcome

LaunchFn = Callable[[list, dict, Callable[[str], None], Callable[[int], None]], object]


def popenLaunch(command: list, extraEnv: dict, onLine, onExit) -> process.PopenLauncher:
    """Launcher without Qt: the caller polls the returned PopenLauncher."""
    return process.PopenLauncher(command, extraEnv, onLine, onExit)


class PredictionJob:
    """`wsp-cirrhosis predict` on one CT in a child process, ending in an Outcome.

    Args:
        scene: the scene receiving the result nodes.
        volumeNode, liverNode: the inputs (result nodes are named and placed after the CT).
        workDir: folder holding the input files and the child's output; removed at the end.
        command, extraEnv: the child's argv and added environment (process.predictCommand,
            process.processEnvironment).
        onProgress: onProgress(fraction, message) for each "progress" event.
        onLog: onLog(line) for each log line of the child.
        onStarted: onStarted() when the child's first line arrives (it is running: cancel works).
        onFinished: onFinished(Outcome), once, unless the job was abandoned.
        launch: launch(command, extraEnv, onLine, onExit) -> handle with .proc (a Popen) and
            .ownProcessGroup.
    """

    def __init__(self, scene, volumeNode, liverNode, *, workDir, command: list, extraEnv: dict,
                 onProgress=None, onLog=None, onStarted=None, onFinished=None,
                 launch: LaunchFn = popenLaunch) -> None:
        self.scene, self.volumeNode, self.liverNode = scene, volumeNode, liverNode
        self.workDir = Path(workDir)
        self.command, self.extraEnv = command, extraEnv
        self.onProgress, self.onLog, self.onFinished = onProgress, onLog, onFinished
        self.onStarted = onStarted
        self._launch = launch
        self.reader = process.ProtocolReader()
        self.state: JobState | None = None
        self.outcome: Outcome | None = None
        self.handle = None
        self.startTime = 0.0

    @property
    def running(self) -> bool:
        return self.state is not None and self.state not in process.FINAL_STATES

    @property
    def outDir(self) -> Path:
        return self.workDir / "result"

    def start(self) -> None:
        """Launch the child; it reports through onLine and onExit."""
        if self.state is not None:
            raise RuntimeError("a PredictionJob runs once")
        self.state = JobState.STARTING
        self.startTime = time.perf_counter()
        logging.info("WSPCirrhosis: running %s", " ".join(self.command))
        try:
            self.handle = self._launch(self.command, self.extraEnv, self.onLine, self.onExit)
        except Exception:
            self.state = JobState.FAILED
            shutil.rmtree(self.workDir, ignore_errors=True)
            raise

    def onLine(self, line: str) -> None:
        """One output line of the child (main thread)."""
        event = self.reader.feed(line)
        if self.state == JobState.STARTING:
            self.state = JobState.RUNNING  # the child is alive: from now on a click means Cancel
            if self.onStarted is not None:
                self.onStarted()
        if self.state in (JobState.CANCELLING, JobState.ABANDONED):
            return
        if event is None:
            if line.strip() and self.onLog is not None:
                self.onLog(line.rstrip())
        elif event["event"] == "progress" and self.onProgress is not None:
            self.onProgress(float(event.get("fraction", 0.0)), str(event.get("message", "")))

    def cancel(self) -> bool:
        """Terminate the child (its whole process tree); False while it is still starting."""
        if self.state != JobState.RUNNING:
            return False
        self.state = JobState.CANCELLING
        self._terminate()
        return True

    def abandon(self) -> None:
        """Module reload or application exit: end the child; nothing is written or reported."""
        if self.running:
            self.state = JobState.ABANDONED
            self._terminate()

    def killIfStillRunning(self) -> None:
        """After a cancel, force the child down if SIGTERM was not enough (call after a delay)."""
        proc = getattr(self.handle, "proc", None)
        if proc is not None and proc.poll() is None and self.state in (JobState.CANCELLING, JobState.ABANDONED):
            process.terminateTree(proc, self.reader.workerPid, getattr(self.handle, "ownProcessGroup", False), kill=True)

    def onExit(self, returnCode: int) -> None:
        """The child ended (main thread): read the result back, or explain why there is none."""
        try:
            outcome = self._outcome(int(returnCode))
        finally:
            shutil.rmtree(self.workDir, ignore_errors=True)
        self.state, self.outcome = outcome.state, outcome
        seconds = time.perf_counter() - self.startTime
        logging.info("WSPCirrhosis: %s (%s, %.1f s)", outcome.message, outcome.state.value, seconds)
        if outcome.state != JobState.ABANDONED and self.onFinished is not None:
            self.onFinished(outcome)

    def _outcome(self, code: int) -> Outcome:
        if self.state == JobState.ABANDONED:
            return Outcome(JobState.ABANDONED, "abandoned: the module was reloaded or Slicer is closing")
        if self.state == JobState.CANCELLING:
            return Outcome(JobState.CANCELLED, "Cancelled: no result was written")
        done, error = self.reader.done, self.reader.error
        if code == 0 and done is not None:
            if not self.scene.IsNodePresent(self.volumeNode):
                return Outcome(JobState.DROPPED, "the CT left the scene during the prediction; its result was dropped")
            liver = self.liverNode if self.liverNode is not None and self.scene.IsNodePresent(self.liverNode) else None
            try:
                result = process.loadResult(self.scene, done["files"]["prediction_json"], self.volumeNode, liver)
                saliency = None
                if done["files"].get("saliency_nii"):
                    from . import nodes

                    saliency = nodes.loadSaliencyVolume(self.scene, done["files"]["saliency_nii"], self.volumeNode)
            except Exception as exc:  # a bad result file is a failure of this run, shown like one
                from wsp_cirrhosis.inference import WSPError

                detail = None if isinstance(exc, WSPError) else traceback.format_exc()
                return Outcome(JobState.FAILED, f"cannot read the result ({exc})", detail=detail)
            return Outcome(JobState.COMPLETED, panel.resultText(result.prediction), result=result, saliency=saliency)
        if error is not None:
            message = str(error.get("message", "prediction failed"))
            expected = error.get("exit_code") == 2  # a WSPError: its one line says everything
        else:
            message = f"the prediction process stopped with exit code {code} and no result"
            expected = False
        tail = "\n".join(self.reader.tail)
        return Outcome(JobState.FAILED, message, detail=None if expected or not tail else tail)

    def _terminate(self) -> None:
        proc = getattr(self.handle, "proc", None)
        if proc is not None:
            process.terminateTree(proc, self.reader.workerPid, getattr(self.handle, "ownProcessGroup", False))


def createJob(scene, volumeNode, liverNode, workDir, *, segmentId=None, liverLabel: int = 0, model=None,
              device: str = "auto", batchSize: int = 32, python: str | None = None, saliency: bool = False,
              **callbacks) -> PredictionJob:
    """Write the inputs into `workDir` and build the (not yet started) job; main thread only
    (`saliency`: the child also writes the relevance map, loaded as a volume node at the end).

    Raises:
        InputError: bad inputs (nothing is written, the scene is unchanged).
        TrainerMissingError: wsp_cirrhosis is not importable in this Python.
    """
    workDir = Path(workDir)
    try:
        ctPath, maskPath = process.writeInputs(volumeNode, liverNode, workDir / "inputs", segmentId, liverLabel)
        command = process.predictCommand(python or process.pythonExecutable(), ctPath, maskPath, workDir / "result",
                                         model=model, device=device, batchSize=batchSize, saliency=saliency)
        extraEnv = process.processEnvironment()
    except BaseException:
        shutil.rmtree(workDir, ignore_errors=True)
        raise
    return PredictionJob(scene, volumeNode, liverNode, workDir=workDir, command=command, extraEnv=extraEnv, **callbacks)
