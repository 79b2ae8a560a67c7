"""flows/stream.py: a command's output reaches the logger line by line while it runs; progress bars are
rate-limited; a failure or a timeout quotes the last lines."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import pytest

from flows.stream import CommandFailed, ProgressLines, run_streaming


class Clock:
    """A hand-moved clock for the rate limiter."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """The messages a logger received, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def logger():
    log = logging.getLogger(f"test-stream-{time.monotonic_ns()}")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = Lines()
    log.addHandler(handler)
    log.lines = handler.messages
    return log


def test_progress_refreshes_pass_once_per_interval_and_lines_at_once():
    clock = Clock()
    splitter = ProgressLines(interval=5.0, clock=clock)
    out = splitter.feed("epoch 1 starts\n")
    for i in range(80):  # 80 tqdm-style redraws, 0.125 s apart: 10 s of a bar
        out += splitter.feed(f"\r{i:3d}%|bar")
        clock.now += 0.125
    out += splitter.feed("\rdone 100%|bar\n") + splitter.feed("epoch 1 ends\nno newline")
    # redraws at t = 0 and t = 5.0 pass; the bar's last state (closed by '\n') and ordinary lines always
    assert out == ["epoch 1 starts", "  0%|bar", " 40%|bar", "done 100%|bar", "epoch 1 ends"]
    assert splitter.close() == ["no newline"]


def test_refreshes_of_one_chunk_log_the_newest_and_crlf_is_a_newline():
    clock = Clock()
    splitter = ProgressLines(interval=5.0, clock=clock)
    assert splitter.feed("\r 1%\r 2%\r 3%") == [" 3%"]  # three redraws in one read: the newest
    clock.now = 6.0
    assert splitter.feed("\r 4%\r") == [" 4%"]  # 'text\r' style: due again after the interval
    assert splitter.feed("\n") == []  # the bar's last state was logged already
    assert splitter.feed("windows line\r") == []  # '\r' at the end of a read: wait for a possible '\n'
    assert splitter.feed("\nnext\r\n") == ["windows line", "next"]


def test_real_tqdm_through_a_command_is_rate_limited(tmp_path, logger):
    script = ("import sys, time\nfrom tqdm import tqdm\nprint('before', flush=True)\n"
              "for _ in tqdm(range(60), mininterval=0, miniters=1, file=sys.stderr):\n    time.sleep(0.04)\n"
              "print('after', flush=True)\n")
    streamed = run_streaming([sys.executable, "-c", script], tmp_path, None, 60, logger, progress_interval=1.0)
    bars = [line for line in logger.lines if "it/s" in line or "s/it" in line or "60/60" in line]
    # stdout and stderr are two pipes read as they come: the order holds within each, not across them
    assert [line for line in logger.lines if line in ("before", "after")] == ["before", "after"]
    assert "60/60" in bars[-1]  # the bar's last state always passes
    assert 2 <= len(bars) <= 6, bars  # ~2.4 s of 60 redraws, one per second at most, plus the last state
    assert streamed.stdout == "before\nafter"


def test_lines_reach_the_logger_while_the_command_runs(tmp_path, logger):
    release = tmp_path / "release"
    cmd = f"echo first line; while [ ! -f {release} ]; do sleep 0.05; done; echo second line"
    worker = threading.Thread(target=run_streaming, args=(cmd, tmp_path, None, 60, logger))
    worker.start()
    deadline = time.monotonic() + 20
    while "first line" not in logger.lines and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logger.lines == ["first line"]  # logged while the command still waits for the release file
    release.touch()
    worker.join(timeout=20)
    assert logger.lines == ["first line", "second line"]


def test_a_failure_quotes_the_last_lines(tmp_path, logger):
    cmd = "for i in $(seq 1 100); do echo line $i; done; echo 'ValueError: boom' >&2; exit 3"
    with pytest.raises(CommandFailed) as failure:
        run_streaming(cmd, tmp_path, None, 60, logger, name="stage bad")
    message = str(failure.value)
    assert message.splitlines()[0] == "stage bad failed (exit 3): ValueError: boom"
    # the last 40 lines; stdout and stderr are read by two threads, so where the error falls among them varies
    assert "line 100" in message and "line 60" not in message
    assert len(logger.lines) == 101  # and every line was logged


def test_a_timeout_kills_the_command_and_its_children(tmp_path, logger):
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(CommandFailed, match=r"^slow timed out after 1 s and was killed: started"):
        run_streaming(f"echo started; sleep 60 & echo $! > {pid_file}; wait", tmp_path, None, 1, logger,
                      name="slow")
    assert time.monotonic() - started < 15
    sleeper = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while running(sleeper) and time.monotonic() < deadline:  # killed with its group, then reaped by init
        time.sleep(0.1)
    assert not running(sleeper)


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
