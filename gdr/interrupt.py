"""Stop when asked: SIGTERM and SIGINT end a run at the next item (evaluation) or step (training) boundary.

`timeout`, ``docker stop``, a SLURM time limit and a cancelled CI job send SIGTERM; Ctrl-C sends SIGINT. While a
`StopSignals` block is active, either signal only records that a stop was asked for; the work loop calls
`StopSignals.check` at its boundaries, which raises `Interrupted`. What was finished stays on disk (every file
is written atomically), nothing partial is left, the exit status is ``128 + signal`` (143 for SIGTERM, 130 for
SIGINT), and rerunning the same command resumes. A second Ctrl-C stops at once (Python's `KeyboardInterrupt`).

Handlers installed before Lightning's are kept by it (its signal connector composes with an existing SIGTERM
handler), so a Lightning loop and this module both see the signal.
"""

from __future__ import annotations

import os
import signal
import threading

from gdr.errors import GdrError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(GdrError):
    """The run stopped at a boundary because a signal asked it to. ``exit_code`` = 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """Context manager: record SIGTERM/SIGINT instead of dying mid-item; `check` raises `Interrupted`.

    Outside the main thread (where Python cannot install handlers) it installs nothing and never stops.
    ``sigint_as_sigterm``: also send this process SIGTERM on the first Ctrl-C, so that a loop that watches for
    SIGTERM only (Lightning's fit loop) stops the same way.
    """

    def __init__(self, sigint_as_sigterm: bool = False):
        self.signum: int | None = None
        self.sigint_as_sigterm = sigint_as_sigterm
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt  # asked twice: stop now
        if self.signum is None:  # the first signal names the stop (a forwarded SIGINT stays SIGINT)
            self.signum = signum
            if signum == signal.SIGINT and self.sigint_as_sigterm:
                # Lightning's fit loop stops at a step boundary on SIGTERM only (and tells its DDP ranks).
                os.kill(os.getpid(), signal.SIGTERM)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self, what: str) -> None:
        """Raise `Interrupted` if a stop was asked for; `what` says what is done, e.g. ``"12 of 40 items done"``."""
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            raise Interrupted(self.signum, f"stopped by {name}: {what}; rerun the same command to resume")
