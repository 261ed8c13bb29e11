"""Progress for builds that take minutes: TensorRT's IProgressMonitor where the runtime has one, else a spinner.

On a terminal one line is redrawn in place; in a log (CI) each top-level build phase is printed once, and the
spinner prints a line every 30 s, so logs stay short and still show the build is alive.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, Iterator, Optional, TextIO


class _Line:
    """One status line: redrawn on a terminal, printed only when its text changes otherwise."""

    def __init__(self, label: str, stream: TextIO):
        self.label, self.stream, self.started = label, stream, time.time()
        self.tty = stream.isatty()
        self.last = ""
        self.lock = threading.Lock()

    def show(self, text: str, force: bool = False) -> None:
        with self.lock:
            if self.tty:
                line = f"{self.label}: {text} ({time.time() - self.started:.0f} s)"
                self.stream.write("\r" + line[:118].ljust(118))
                self.stream.flush()
            elif force or text != self.last:
                self.stream.write(f"{self.label}: {text} ({time.time() - self.started:.0f} s)\n")
                self.stream.flush()
            self.last = text

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 118 + "\r")
            self.stream.flush()


def make_monitor(trt: Any, line: _Line) -> Optional[Any]:
    """An IProgressMonitor of `trt` that writes to `line`, or None when this TensorRT has none (before 10.0)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.phases: dict[str, tuple[Optional[str], int]] = {}
            self.steps: dict[str, int] = {}

        def _path(self, phase: str) -> str:
            names = []
            while phase is not None and phase in self.phases:
                names.append(phase)
                phase = self.phases[phase][0]
            return " > ".join(reversed(names))

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
            self.phases[phase_name] = (parent_phase, int(num_steps))
            self.steps[phase_name] = 0
            if parent_phase is None or line.tty:
                line.show(self._path(phase_name))

        def step_complete(self, phase_name: str, step: int) -> bool:
            self.steps[phase_name] = int(step) + 1
            if line.tty:
                total = self.phases.get(phase_name, (None, 0))[1]
                line.show(f"{self._path(phase_name)} {self.steps[phase_name]}/{total}")
            return True  # never cancel; Ctrl-C interrupts the build itself

        def phase_finish(self, phase_name: str) -> None:
            self.phases.pop(phase_name, None)
            self.steps.pop(phase_name, None)

    return Monitor()


@contextlib.contextmanager
def _spinner(line: _Line) -> Iterator[None]:
    stop = threading.Event()

    def spin() -> None:
        frames, i = "|/-\\", 0
        while not stop.wait(0.25 if line.tty else 30.0):
            line.show(f"building {frames[i % 4]}" if line.tty else "still building", force=True)
            i += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def build_progress(trt: Any, label: str, stream: Optional[TextIO] = None) -> Iterator[Optional[Any]]:
    """Yield a monitor to set as `config.progress_monitor` (or None, with a spinner running instead)."""
    line = _Line(label, stream or sys.stderr)
    monitor = make_monitor(trt, line)
    try:
        if monitor is not None:
            line.show("starting")
            yield monitor
        else:
            with _spinner(line):
                yield None
    finally:
        line.close()
