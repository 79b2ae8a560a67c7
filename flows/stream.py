"""A command's output streamed into a logger line by line as it arrives (a Prefect run logger in the flows).

Ordinary lines pass at once. A progress bar redraws its line with ``\\r`` (tqdm, many times a second); its
refreshes pass at most once every :data:`PROGRESS_INTERVAL_S`, and its last state (the ``\\n`` that closes it)
always, so a 6-hour stage shows where it is without one log line per refresh.
"""

from __future__ import annotations

import codecs
import logging
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PROGRESS_INTERVAL_S = 5.0  # at most one progress-bar line per interval
TAIL_LINES = 40  # lines of output quoted in the error of a failed command
EXIT_DRAIN_S = 5.0  # after the command exits, how long a child that inherited its pipes may keep them open
KILL_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long
SEPARATOR = re.compile(r"\r\n?|\n")


class CommandFailed(RuntimeError):
    """A streamed command exited non-zero or ran out of time; the message ends with its last lines of output."""


class ProgressLines:
    """Cuts a text stream into log lines: ``\\n``-terminated lines pass at once, the ``\\r`` refreshes of a
    progress bar pass at most once every ``interval`` seconds (of ``clock``), blank ones never."""

    def __init__(self, interval: float = PROGRESS_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._pending = ""        # text after the last separator
        self._redraw = False      # the pending text follows a '\r': a progress refresh
        self._shown: str | None = None  # the refresh being drawn, if already logged
        self._last_refresh = -float("inf")

    def feed(self, text: str) -> list[str]:
        """The lines ``text`` completes, then the newest refresh it brings if one is due."""
        self._pending += text
        lines: list[str] = []
        newest = None  # the newest refresh of this chunk not logged yet
        start = 0
        for match in SEPARATOR.finditer(self._pending):
            if match.group() == "\r" and match.end() == len(self._pending):
                break  # maybe the first half of '\r\n': decided by the next chunk
            segment, start = self._pending[start:match.start()], match.end()
            shown, self._shown = self._shown, None
            fresh = segment.strip() and segment != shown
            self._redraw = match.group() == "\r"  # the next text redraws this line
            if self._redraw:
                newest = segment if fresh else None
            else:  # an ordinary line, or the last state of a bar (it supersedes the bar's refreshes)
                newest = None
                if fresh:
                    lines.append(segment.rstrip())
        self._pending = self._pending[start:]
        drawing = self._pending.removesuffix("\r")  # a refresh drawn in one write: show it now, not at the next
        still_drawing = bool(self._redraw and drawing.strip() and drawing != self._shown)
        if still_drawing:
            newest = drawing
        if newest is not None and self._refresh_due():
            lines.append(newest.rstrip())
            if still_drawing:
                self._shown = drawing
        return lines

    def close(self) -> list[str]:
        """The unterminated rest at the end of the stream."""
        rest, self._pending = self._pending.removesuffix("\r"), ""
        return [rest.rstrip()] if rest.strip() and rest != self._shown else []

    def _refresh_due(self) -> bool:
        now = self.clock()
        if now - self._last_refresh < self.interval:
            return False
        self._last_refresh = now
        return True


@dataclass(frozen=True)
class Streamed:
    stdout: str  # every stdout line that was logged, for callers that parse it
    tail: tuple[str, ...]  # the last TAIL_LINES lines of stdout and stderr, in arrival order


def _pump(name: str, pipe, chunks: queue.Queue) -> None:
    """Forward a pipe's bytes to ``chunks`` as they arrive; ``(name, None)`` at its end."""
    try:
        for chunk in iter(lambda: pipe.read(65536), b""):
            chunks.put((name, chunk))
    finally:
        chunks.put((name, None))


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM the command's process group (the shell and the stage under it), SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def run_streaming(cmd: str | Sequence[str], cwd: str | os.PathLike, env: dict[str, str] | None, timeout: float,
                  logger: logging.Logger | logging.LoggerAdapter, name: str | None = None,
                  progress_interval: float = PROGRESS_INTERVAL_S) -> Streamed:
    """Run ``cmd`` (a string runs in the shell) in ``cwd`` and log its stdout and stderr at INFO, line by line
    as they arrive. Raises :class:`CommandFailed` (named ``name``, headed by the last stderr line, quoting the
    last lines) if it exits non-zero or runs longer than ``timeout`` seconds (then its whole process group is
    killed)."""
    label = name or (cmd if isinstance(cmd, str) else " ".join(cmd))
    proc = subprocess.Popen(cmd, shell=isinstance(cmd, str), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, start_new_session=True)
    chunks: queue.Queue = queue.Queue()
    for stream_name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        threading.Thread(target=_pump, args=(stream_name, pipe, chunks), daemon=True).start()
    splitters = {s: ProgressLines(progress_interval) for s in ("stdout", "stderr")}
    decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in ("stdout", "stderr")}
    stdout: list[str] = []
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    last_error = ""  # the last non-blank line on stderr
    deadline = time.monotonic() + timeout
    open_streams, exited_at, timed_out = 2, None, False
    try:
        while open_streams:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if proc.poll() is not None:
                exited_at = exited_at or now
                if now - exited_at > EXIT_DRAIN_S:
                    break  # a background child holds the pipes: the command itself is done
            try:
                stream_name, chunk = chunks.get(timeout=min(1.0, deadline - now))
            except queue.Empty:
                continue
            if chunk is None:
                open_streams -= 1
                lines = splitters[stream_name].feed(decoders[stream_name].decode(b"", final=True))
                lines += splitters[stream_name].close()
            else:
                lines = splitters[stream_name].feed(decoders[stream_name].decode(chunk))
            for line in lines:
                logger.info(line)
                tail.append(line)
                if stream_name == "stdout":
                    stdout.append(line)
                elif line.strip():
                    last_error = line  # the headline: the two pipes are read by two threads, in either order
        if not timed_out:
            try:  # the streams closed: the command is done, or has closed them and runs on
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            _kill(proc)
    except BaseException:  # interrupted, or the wait timed out: never leave the stage running
        _kill(proc)
        raise
    if timed_out or proc.returncode != 0:
        what = f"timed out after {timeout:g} s and was killed" if timed_out else f"failed (exit {proc.returncode})"
        headline = last_error or (tail[-1] if tail else "no output")
        raise CommandFailed(f"{label} {what}: {headline}\n"
                            f"in {cwd}, the last lines of its output:\n" + "\n".join(tail))
    return Streamed("\n".join(stdout), tuple(tail))
