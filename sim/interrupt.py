"""Ctrl-C, the same for every command: "blocksim: interrupted", exit code 130, no traceback.

Theory of operation.  While the program loads there is nothing to clean up,
so SIGINT exits at once (`exit_while_loading`).  Once a command runs, SIGINT
raises `KeyboardInterrupt` (`raise_interrupt`) so that every `with` block and
`finally` clause cleans up on the way out (QEMU told to quit, temporary
folders removed, an output being written left as it was), and the command
line turns it into exit code 130.  Python swallows an exception raised inside
a garbage-collector callback or a `__del__` (it only reports it as
"Exception ignored"); such an interrupt is not reported but delivered again
a moment later, and `interrupted()` stays true so the exit code is 130
whatever the command did with it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, NoReturn

EXIT_INTERRUPTED = 130
MESSAGE = "blocksim: interrupted"
_state = {"interrupted": False, "finished": False}
_default_unraisable = sys.unraisablehook


def interrupted() -> bool:
    """Whether SIGINT arrived since `raise_interrupt` was installed."""
    return _state["interrupted"]


def _exit_now(_signum: int, _frame: FrameType | None) -> None:
    os.write(2, (MESSAGE + "\n").encode())
    os._exit(EXIT_INTERRUPTED)


def _raise(_signum: int, _frame: FrameType | None) -> None:
    _state["interrupted"] = True
    raise KeyboardInterrupt


def _unraisable(info: Any) -> None:
    if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
        if _state["finished"]:
            return
        # swallowed where Python cannot raise it: deliver it again shortly
        timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()
        return
    _default_unraisable(info)


def exit_while_loading() -> None:
    """SIGINT exits at once, quietly (nothing to clean up yet)."""
    signal.signal(signal.SIGINT, _exit_now)


def raise_interrupt() -> None:
    """SIGINT raises KeyboardInterrupt (cleanup runs), and is remembered."""
    _state["interrupted"] = False
    sys.unraisablehook = _unraisable
    signal.signal(signal.SIGINT, _raise)


def finish() -> None:
    """The command is over: a late SIGINT (during shutdown) changes nothing."""
    _state["finished"] = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def exit_interrupted() -> NoReturn:
    """End the process the one way an interrupted command ends."""
    finish()
    sys.stderr.write(MESSAGE + "\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_INTERRUPTED)
