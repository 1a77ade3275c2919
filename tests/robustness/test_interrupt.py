"""Interrupted and failed runs of `dpodiag report` leave no output file and no temporary file.

A report of a large pair log runs in a subprocess, and the test stops it with SIGINT or SIGTERM
midway, freezes it with SIGSTOP while it writes, or limits its file size so that the write fails.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from make_corpus import pair_frame

# Big enough that reading and checking take several seconds after the imports.
STEPS, PAIRS = 150, 600
SIGNAL_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
SIGNAL_MESSAGE = {signal.SIGINT: "dpodiag: interrupted",
                  signal.SIGTERM: "dpodiag: terminated (SIGTERM)"}

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def start_report(folder: Path, **options) -> subprocess.Popen:
    command = [sys.executable, "-m", "dpodiag", "report", "big.parquet", "-o", "out/report.html",
               "--beta", "0.1", "--loss-type", "sigmoid", "--device", "cpu"]
    return subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **options)


def leftovers(folder: Path) -> list[str]:
    """Files that a report run left in the output folder."""
    out = folder / "out"
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


@pytest.fixture(scope="module")
def big_log(tmp_path_factory) -> tuple[Path, float]:
    """A folder with big.parquet, and the seconds that a full report of it takes."""
    folder = tmp_path_factory.mktemp("interrupt")
    pair_frame(steps=STEPS, pairs=PAIRS).write_parquet(folder / "big.parquet")
    started = time.monotonic()
    process = start_report(folder)
    _, stderr = process.communicate(timeout=600)
    duration = time.monotonic() - started
    assert process.returncode == 0, stderr
    assert leftovers(folder) == ["report.html"]
    (folder / "out" / "report.html").unlink()
    return folder, duration


@pytest.fixture
def log_folder(big_log) -> tuple[Path, float]:
    """`big_log` with an empty output folder, whatever an earlier test left in it."""
    folder, duration = big_log
    for path in (folder / "out").glob("*"):
        path.unlink()
    return folder, duration


def wait_stopped(process: subprocess.Popen, timeout: float = 10.0) -> bool:
    """Wait until `process` is stopped by a SIGSTOP sent to it (state T in /proc); False when
    it exits or times out first. A signal is delivered some time after kill() returns."""
    deadline = time.monotonic() + timeout
    stat = Path(f"/proc/{process.pid}/stat")
    while time.monotonic() < deadline:
        try:
            # The state follows the command name, which is in parentheses.
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state in ("T", "t"):
            return True
        if state in ("Z", "X"):
            return False
        time.sleep(0.001)
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_midway_leaves_nothing(log_folder, signum):
    folder, duration = log_folder
    process = start_report(folder)
    time.sleep(duration / 2)
    assert process.poll() is None, "the report finished before the signal"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == SIGNAL_STATUS[signum]
    assert stderr == SIGNAL_MESSAGE[signum] + "\n"  # one line, no empty line before it
    assert leftovers(folder) == []


def test_sigterm_while_writing_removes_temporary_file(log_folder):
    # Freeze the process (SIGSTOP) as soon as its temporary file appears, look, then stop it.
    folder, _ = log_folder
    for _ in range(3):
        process = start_report(folder)
        seen: list[str] = []
        while process.poll() is None and not seen:
            seen = [name for name in leftovers(folder) if name.endswith(".tmp")]
        if not seen:
            process.communicate(timeout=120)
            (folder / "out" / "report.html").unlink(missing_ok=True)
            continue
        process.send_signal(signal.SIGSTOP)
        if not wait_stopped(process) or "report.html" in leftovers(folder):
            # The process ended, or renamed its file, before the freeze: the write was complete.
            process.send_signal(signal.SIGCONT)
            process.communicate(timeout=120)
            (folder / "out" / "report.html").unlink(missing_ok=True)
            continue
        assert seen[0].startswith(".report.html.")
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == SIGNAL_STATUS[signal.SIGTERM]
        assert stderr.strip().splitlines() == [SIGNAL_MESSAGE[signal.SIGTERM]]
        assert leftovers(folder) == []
        return
    pytest.skip("the process finished its write before the test saw the temporary file, 3 times")


def test_failed_write_leaves_nothing(log_folder):
    # A file size limit below the report's size makes the write fail as a full disk would.
    folder, _ = log_folder

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    process = start_report(folder, preexec_fn=limit_file_size)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 2
    assert stderr.strip().splitlines() == [
        "dpodiag: error: out/report.html: cannot write the file (File too large); raise the file "
        "size limit (ulimit -f) or choose another folder"]
    assert leftovers(folder) == []


def test_existing_output_reported_before_reading(tmp_path):
    # The log is not a parquet file: had the report read it first, it would fail on the log.
    (tmp_path / "big.parquet").write_text("not a parquet file")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.html").write_text("earlier")
    process = start_report(tmp_path)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 2
    assert stderr.strip().splitlines() == [
        "dpodiag: error: out/report.html: file exists; pass --force (force=True in Python) to "
        "overwrite it, or choose another name"]
    assert (tmp_path / "out" / "report.html").read_text() == "earlier"


