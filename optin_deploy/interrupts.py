"""Signals that stop a run: SIGINT (Ctrl-C), SIGTERM and SIGHUP.

Each raises :class:`Terminated` (a ``KeyboardInterrupt``) in the main thread, so the same cleanup
runs for all three (staging folders removed, nothing half-written) and the CLI exits 128 + signum.

A Python signal handler's exception can be lost: when the signal lands while the main thread runs a
finaliser (``__del__``, a weakref callback) or a C callback, Python prints "Exception ignored" and
carries on. A stop must not depend on that luck (a SIGTERM once left a build benchmarking for
minutes), so the first signal also starts a watchdog thread that delivers the same signal to the
main thread again every :data:`REDELIVER_S` seconds until the CLI says the stop was handled.

Code that must not be cut short (removing a staging folder, renaming a finished bundle into place)
runs inside :func:`deferred`: a signal that arrives there is recorded, and raised when it ends.
This module imports nothing heavy, so a test can use it in a bare subprocess.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
import time
from typing import Iterator

REDELIVER_S = 2.0  # how long a lost stop waits before the watchdog delivers the signal again

STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGINT, SIGTERM or SIGHUP arrives."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _State:
    """Written by the signal handler, which always runs in the main thread; the watchdog only reads it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.signum: int | None = None  # the first stop signal of this run
        self.handled = False  # the CLI caught the stop and is exiting
        self.deferring = 0  # depth of deferred() sections
        self.watchdog: threading.Thread | None = None
        self.published: list[str] = []  # outputs this run put in place, complete


def note_published(path) -> None:
    """An output (a bundle, an export, a pruned model) is in place, complete: a stop after this point
    does not undo it, and the CLI's stop line says so."""
    _state.published.append(str(path))


def forget_published_under(folder) -> None:
    """Outputs published inside ``folder`` (a pruned model written into a build's staging folder) are no one's
    output once that folder is removed or renamed: only what is left in place is reported."""
    root = os.path.join(os.path.abspath(str(folder)), "")
    _state.published = [p for p in _state.published if not os.path.abspath(p).startswith(root)]


def published() -> list[str]:
    """What this run published before it was stopped (see :func:`note_published`)."""
    return list(_state.published)


def ignore_until_exit() -> None:
    """The command is over (its output published, its exit code set): a stop signal in the second or so the
    interpreter takes to shut down must not turn a finished run into an "interrupted" one. Only for the
    console script's own process, never for a caller of :func:`optin_deploy.cli.main` in-process."""
    _state.handled = True
    for sig in STOP_SIGNALS:
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):
            pass


_state = _State()


def received() -> int | None:
    """The stop signal this run received, or None."""
    return _state.signum


def mark_handled() -> None:
    """The stop reached the CLI: the watchdog stops delivering it again."""
    _state.handled = True


def _on_signal(signum, frame) -> None:  # noqa: ARG001
    # no lock: a handler can run again inside itself (a second Ctrl-C, a re-delivery), and would deadlock on one
    if _state.signum is None:
        _state.signum = signum
    if _state.watchdog is None:
        _state.watchdog = threading.Thread(target=_redeliver, name="optin-deploy-stop", daemon=True)
        _state.watchdog.start()
    if _state.deferring or _state.handled:
        return  # recorded; deferred() raises it when its section ends, or the CLI is already stopping
    raise Terminated(_state.signum)


def _redeliver() -> None:
    while True:
        time.sleep(REDELIVER_S)
        if _state.handled:
            return
        if not _state.deferring and _state.signum is not None:
            try:
                _thread.interrupt_main(_state.signum)  # runs _on_signal in the main thread again
            except (ValueError, RuntimeError):
                return


def install() -> dict:
    """Route the stop signals to :class:`Terminated` (main thread only); returns the previous handlers.

    SIGINT too: a shell starts background jobs with SIGINT ignored, but ``kill -INT`` must still stop
    the work."""
    _state.reset()
    previous = {}
    for sig in STOP_SIGNALS:
        try:
            previous[sig] = signal.signal(sig, _on_signal)
        except (ValueError, OSError):  # not the main thread
            pass
    return previous


def restore(previous: dict) -> None:
    """Put back the handlers :func:`install` replaced; a watchdog still running stops."""
    _state.handled = True
    for sig, handler in previous.items():
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):
            pass


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run a short section that must finish (cleanup, an atomic rename) even if a stop signal arrives;
    a signal that arrived during it is raised when it ends (unless an exception is already on its way)."""
    before = _state.signum
    _state.deferring += 1
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        _state.deferring -= 1
        if (not failed and not _state.deferring and not _state.handled and _state.signum is not None
                and before is None):
            raise Terminated(_state.signum)
