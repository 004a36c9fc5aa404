"""How long a reader waits on a silent bus stream, against how often its senders keep it alive."""

from __future__ import annotations

from byorouter_common.settings import ServiceSettings
from byorouter_router.settings import RouterSettings
from byorouter_tunnel.settings import TunnelSettings


def test_a_stream_whose_sender_died_is_given_up_after_three_missed_keep_alives() -> None:
    # A router copy killed mid-stream sends nothing more: the app's stream must end with an
    # error soon after, not after 30 s, yet a sender that is merely busy must not be cut off.
    idle = ServiceSettings().stream_idle_timeout_s
    for interval in (RouterSettings().keepalive_interval_s, TunnelSettings().keepalive_interval_s):
        assert 2 * interval < idle <= 3 * interval
