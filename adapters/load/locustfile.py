"""Lean-join users (signaling only unless ``--leanjoin-media``): ``locust -f adapters/load/locustfile.py``.

Options (``--leanjoin-*``, or ``LEANJOIN_*`` in the environment) and the api
key (``LEANJOIN_API_KEY``): see the header of ``locust_user.py``.
"""

from leanjoin.adapters.load import LeanJoinUser


class SignalingUser(LeanJoinUser):
    """Join, queue, room_info, the initial-state ack and runtime prompts; media
    only with ``--leanjoin-media``."""
