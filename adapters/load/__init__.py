"""Load tests on Locust: the engine driven by gevent, a second adapter stack.

No asyncio here: ``websocket-client`` on Locust's monkey-patched sockets,
one greenlet per session owning its engine (``session_runner.py``), two per
signaling socket (``signal_socket.py``), the Locust user and its options
(``locust_user.py``). Importing this package imports Locust, which
monkey-patches the standard library for gevent: do it in Locust's processes
only. ``locustfile.py`` beside it is a ready locustfile
(``locust -f adapters/load/locustfile.py``).
"""

from leanjoin.adapters.load.locust_user import LeanJoinUser, SessionFailure, session_setup
from leanjoin.adapters.load.session_runner import Measure, SessionPlan, SessionRunner
from leanjoin.adapters.load.signal_socket import GeventSignalSocket, GeventSocketOptions

__all__ = [
    "GeventSignalSocket",
    "GeventSocketOptions",
    "LeanJoinUser",
    "Measure",
    "SessionFailure",
    "SessionPlan",
    "SessionRunner",
    "session_setup",
]
