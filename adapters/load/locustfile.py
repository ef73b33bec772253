"""Signaling-only lean-join users: ``locust -f adapters/load/locustfile.py``.

Options: ``locust -f adapters/load/locustfile.py --help`` (the ``--leanjoin-*``
ones), the api key from ``LEANJOIN_API_KEY``; see ``locust_user.py``.
"""

from leanjoin.adapters.load import LeanJoinUser


class SignalingUser(LeanJoinUser):
    """Join, queue, room_info, the initial-state ack and runtime prompts; no media."""
