"""Apply as a child process: `PythonSlicer -m wsp_cirrhosis predict ... --progress jsonl`.

Slicer's main thread holds Python's GIL while its Qt event loop idles, so a worker thread would
compute only in short gaps; a separate process runs at full speed, frees all its (GPU) memory
when it ends, and is cancelled by terminating it. This file is the Qt-free part: the command
and its environment, the inputs written with their geometry, the JSON-lines protocol (README
"JSON-lines progress"), the job's states, and the result read back into MRML nodes on the
thread that delivers the process's lines (Slicer's main thread). runner.py connects it to Qt.
"""

from __future__ import annotations

import collections
import enum
import importlib.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import analysis

STDERR_TAIL_LINES = 20  # lines of the child's log shown when it fails
EXIT_CANCELLED = 130  # wsp_cirrhosis.errors.Cancelled.exit_code (SIGTERM, Ctrl+C)
KILL_AFTER_S = 5.0  # a child still alive this long after SIGTERM is killed

LineFn = Callable[[str], None]
ExitFn = Callable[[int], None]


class JobState(enum.Enum):
    STARTING = "starting"  # launched, no line yet: Apply ignores clicks (a double click must not cancel)
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"  # result nodes written
    CANCELLED = "cancelled"
    FAILED = "failed"
    DROPPED = "dropped"  # the CT left the scene (scene closed): result discarded, logged only
    ABANDONED = "abandoned"  # module reloaded or Slicer exiting: process ended, nothing written or reported


FINAL_STATES = (JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED, JobState.DROPPED, JobState.ABANDONED)


@dataclass
class Outcome:
    """How a job ended. result: AnalysisResult when COMPLETED. detail: the child's last log lines
    for an unexpected failure, else None (Slicer's message box shows detailedText=None as "None")."""

    state: JobState
    message: str
    result: object = None
    detail: str | None = None
    saliency: object = None  # the relevance-map volume node, when the run made one


def trainerPythonPath() -> str:
    """The folder holding the `wsp_cirrhosis` package that this Slicer imports.

    PythonSlicer's own path has the extensions installed by the Extensions Manager (their
    qt-scripted-modules folders, through the revision user settings), but not a module folder
    added under Additional module paths, nor a source checkout: the child gets this folder in
    PYTHONPATH so it always runs the same trainer as the module.

    Raises:
        analysis.TrainerMissingError: the package is not importable here.
    """
    spec = importlib.util.find_spec("wsp_cirrhosis")
    if spec is None or not spec.origin:
        raise analysis.TrainerMissingError(analysis.TRAINER_HELP)
    return str(Path(spec.origin).resolve().parent.parent)


def pythonExecutable() -> str:
    """PythonSlicer inside Slicer (on its PATH), else this interpreter (tests, plain Python)."""
    try:
        from slicer import app  # noqa: F401  (only the application has slicer.app)
    except ImportError:
        return sys.executable
    found = shutil.which("PythonSlicer")
    if not found:
        raise RuntimeError("PythonSlicer executable not found next to Slicer")
    return found


def processEnvironment(environ: dict | None = None) -> dict[str, str]:
    """Variables to add to the child's environment: the trainer on PYTHONPATH, unbuffered output."""
    environ = os.environ if environ is None else environ
    paths = [trainerPythonPath()] + [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "PYTHONUNBUFFERED": "1"}


def predictCommand(python: str, ctPath, maskPath, outDir, *, model=None, device: str = "auto",
                   batchSize: int = 32, saliency: bool = False) -> list[str]:
    """argv of the child: the CLI's own predict command with JSON-lines progress (and
    --saliency: the relevance map saliency.nii.gz on the CT's grid).

    The mask file is already binary (1 = liver), hence --liver-label 1 whatever the bundle says,
    exactly as the in-process path (analysis.predict) does.
    """
    command = [python, "-m", "wsp_cirrhosis", "predict", str(ctPath), "--liver-mask", str(maskPath),
               "--liver-label", "1", "--out", str(outDir), "--device", device, "--batch-size", str(int(batchSize)),
               "--progress", "jsonl"]
    if model is not None and str(model) not in ("", "."):
        command += ["--model", str(model)]
    if saliency:
        command.append("--saliency")
    return command


def writeInputs(volumeNode, liverNode, folder, segmentId: str | None = None, liverLabel: int = 0) -> tuple[Path, Path]:
    """CT and binary liver mask as NRRD files with their world geometry; (ct path, mask path).

    The images are those of the in-process path (analysis.prepareInputs), so both paths score
    the same voxels. Reads MRML: main thread only.

    Raises:
        InputError: see nodes.volumeToImage and nodes.maskToImage (nothing is written then).
    """
    image, mask = analysis.prepareInputs(volumeNode, liverNode, segmentId, liverLabel)
    return writeImages(image, mask, folder)


def writeImages(image, mask, folder) -> tuple[Path, Path]:
    """SimpleITK CT and mask -> folder/ct.nrrd, folder/liver.nrrd (NRRD keeps the geometry)."""
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ctPath, maskPath = folder / "ct.nrrd", folder / "liver.nrrd"
    sitk.WriteImage(image, str(ctPath), False)  # uncompressed: written and read again at once
    sitk.WriteImage(mask, str(maskPath), True)
    return ctPath, maskPath


class ProtocolReader:
    """Sorts the child's output lines: protocol events (JSON objects) and log lines (the rest).

    Slicer's launchConsoleProcess merges stderr into stdout, so log lines and events arrive on
    one stream; a line is an event when it is a JSON object with an "event" key.
    """

    def __init__(self, tailLines: int = STDERR_TAIL_LINES) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=tailLines)
        self.start: dict | None = None
        self.done: dict | None = None
        self.error: dict | None = None
        self.lastProgress: dict | None = None

    def feed(self, line: str) -> dict | None:
        """The event of `line`, or None for a log line (kept in `tail`)."""
        text = line.rstrip("\r\n")
        event = None
        if text.startswith("{"):
            try:
                event = json.loads(text)
            except ValueError:
                event = None
        if not isinstance(event, dict) or "event" not in event:
            if text.strip():
                self.tail.append(text)
            return None
        kind = event["event"]
        if kind == "start":
            self.start = event
        elif kind == "progress":
            self.lastProgress = event
        elif kind == "done":
            self.done = event
        elif kind == "error":
            self.error = event
        return event

    @property
    def workerPid(self) -> int | None:
        """pid of the process doing the work (PythonSlicer may be a launcher in front of it)."""
        return int(self.start["pid"]) if self.start and "pid" in self.start else None


class PopenLauncher:
    """The child with a reader thread and a queue; `poll()` hands lines and the exit code to the
    calling thread (a QTimer on Slicer 5.10; by hand in tests). Slicer 5.12+ uses
    slicer.util.launchConsoleProcess(blocking=False) instead, which does the same."""

    def __init__(self, command: list[str], extraEnv: dict[str, str], onLine: LineFn, onExit: ExitFn) -> None:
        self._onLine, self._onExit = onLine, onExit
        self._events: queue.Queue = queue.Queue()
        self._exited = False
        kwargs = {"start_new_session": True} if os.name != "nt" else {
            "creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)}
        self.proc = subprocess.Popen(command, env={**os.environ, **extraEnv}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                     encoding="utf-8", errors="replace", **kwargs)
        self.ownProcessGroup = os.name != "nt"  # its own session: the whole group can be signalled
        threading.Thread(target=self._read, name="WSPCirrhosisReader", daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._events.put(("line", line))
        self._events.put(("exit", self.proc.wait()))

    def poll(self) -> bool:
        """Deliver the queued lines, then the exit code once; True when the child has ended."""
        while not self._exited:
            try:
                kind, payload = self._events.get_nowait()
            except queue.Empty:
                return False
            if kind == "line":
                self._onLine(payload)
            else:
                self._exited = True
                self._onExit(payload)
        return True

    def wait(self, timeout: float = 120.0) -> bool:
        """Poll until the child has ended (tests, scripts); False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


def terminateTree(proc, workerPid: int | None = None, ownProcessGroup: bool = False, kill: bool = False) -> None:
    """End the child and everything it started (PythonSlicer's launcher runs Python as its child).

    SIGTERM first: the CLI then removes its staged output and exits with 130; `kill` forces.
    psutil when installed; else the child's own process group, taskkill /T on Windows, or the
    launcher plus the worker pid the child announced in its "start" event.
    """
    if proc.poll() is not None and workerPid is None:
        return
    sig = getattr(signal, "SIGKILL", signal.SIGTERM) if kill else signal.SIGTERM
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(proc.pid)
            members = parent.children(recursive=True) + [parent]
        except psutil.NoSuchProcess:
            members = []
        members += [psutil.Process(workerPid)] if workerPid and psutil.pid_exists(workerPid) else []
        for member in members:
            try:
                member.kill() if kill else member.terminate()
            except psutil.NoSuchProcess:
                pass
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/PID", str(proc.pid), "/T", "/F"], capture_output=True,
                       creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        return
    if ownProcessGroup:
        _signal(lambda: os.killpg(proc.pid, sig))
        return
    for pid in dict.fromkeys(p for p in (workerPid, proc.pid) if p):  # worker first: it cleans up
        _signal(lambda pid=pid: os.kill(pid, sig))


def _signal(send: Callable[[], None]) -> None:
    try:
        send()
    except (ProcessLookupError, PermissionError):  # already gone (or pid reused by another user)
        pass


def loadResult(scene, predictionJson, volumeNode, liverNode=None):
    """The child's prediction.json -> result nodes in `scene` (main thread); an AnalysisResult."""
    from wsp_cirrhosis.inference import read_prediction

    return analysis.writeOutputs(scene, read_prediction(predictionJson), volumeNode, liverNode)
