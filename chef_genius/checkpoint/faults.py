"""Fault injection for the crash-safety tests: die (SIGKILL) at a chosen point of a save.

Every step of a checkpoint commit or deletion calls ``fault_point(label)``. In normal runs this is a
dictionary lookup and nothing else. The fault-injection tests set, for a training subprocess:

    CHEF_GENIUS_FAULT_AT=N        the process kills itself with SIGKILL at the Nth fault point
                                  (os._exit on Windows, which has no SIGKILL) -- no cleanup runs,
                                  exactly like a power cut or the OOM killer at that instant;
    CHEF_GENIUS_FAULT_DELAY=S     sleep S seconds at every fault point, so that kills sent at random
                                  instants from outside land inside saves often.

In-process tests can set ``faults.hook`` to a function of the label instead.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

FAULT_AT_ENV = "CHEF_GENIUS_FAULT_AT"
FAULT_DELAY_ENV = "CHEF_GENIUS_FAULT_DELAY"

hook: Callable[[str], None] | None = None
_count = 0


def fault_point(label: str) -> None:
    global _count
    if hook is not None:
        hook(label)
    at = os.environ.get(FAULT_AT_ENV)
    delay = os.environ.get(FAULT_DELAY_ENV)
    if at is None and delay is None:
        return
    _count += 1
    if delay:
        time.sleep(float(delay))
    if at is not None and _count == int(at):
        sys.stderr.write(f"fault injection: killing the process at fault point {_count} ({label})\n")
        sys.stderr.flush()
        kill_now()


def kill_now() -> None:
    if sys.platform == "win32":
        os._exit(137)
    os.kill(os.getpid(), signal.SIGKILL)
