"""SIGINT and SIGTERM raised as one exception, and both deferred while the CLI's modules are imported.

This module imports nothing heavy, so that `python -m dpodiag` can use it before it imports the
CLI and the readers, and the commands before they import torch.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

# The exit statuses of a command stopped by a signal: 128 + the signal number, as shells report.
SIGINT_STATUS = 128 + signal.SIGINT
SIGTERM_STATUS = 128 + signal.SIGTERM
MESSAGES = {signal.SIGINT: ("dpodiag: interrupted", SIGINT_STATUS),
            signal.SIGTERM: ("dpodiag: terminated (SIGTERM)", SIGTERM_STATUS)}


class Stopped(BaseException):
    """SIGINT or SIGTERM, raised in the main thread in place of KeyboardInterrupt.

    It unwinds the stack, so that cleanup code (the removal of a half-written temporary output
    file) runs before the process exits. It is not a KeyboardInterrupt, for which click prints
    an empty line before the CLI's own message.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def handle_signals() -> dict:
    """Make SIGINT and SIGTERM raise Stopped; return the previous handlers (none outside the
    main thread). A signal that the process ignores (SIGINT in a background job) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, _raise_stopped) for signum in MESSAGES
            if signal.getsignal(signum) is not signal.SIG_IGN}


def exit_for_signal(signum: int) -> None:
    """Print the one-line message for `signum` on stderr and exit with its status."""
    message, status = MESSAGES[signum]
    sys.stderr.write(message + "\n")
    sys.exit(status)


@contextlib.contextmanager
def deferred_signals():
    """Record SIGINT and SIGTERM inside the block, and exit for the first one after it.

    An exception raised by a signal handler during an import can be swallowed by a bare
    `except:` in a library's import code (torch, numpy), which leaves a module half-initialised
    and fails later. Deferring the signal past the imports avoids that. A signal that the
    process ignores (SIGINT in a background job) stays ignored.
    """
    received: list[int] = []

    def remember(signum, frame):
        received.append(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in MESSAGES:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, remember)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        exit_for_signal(received[0])
