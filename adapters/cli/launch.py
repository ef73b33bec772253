"""The ``leanjoin`` console script's entry point.

The command's imports take a second or so on a busy machine; a Ctrl-C in
that time would print a KeyboardInterrupt traceback from deep in some
library. Here it ends the process as the signal itself does (the shell sees
130, nothing is printed), as a Ctrl-C does once a command handles it.
"""

from __future__ import annotations

import os
import signal


def entry() -> None:
    try:
        from leanjoin.adapters.cli.main import entry as run
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        raise  # not reached: the default action ends the process
    run()
