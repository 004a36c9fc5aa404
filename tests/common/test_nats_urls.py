"""NATS_URL may list every node of a cluster: a service connects to whichever node answers."""

from __future__ import annotations

from byorouter_cli.backends import free_port
from byorouter_common.bus import connect, connect_options
from byorouter_common.settings import ServiceSettings


def test_a_comma_separated_nats_url_names_every_node() -> None:
    settings = ServiceSettings(NATS_URL="nats://10.0.0.1:4222, nats://10.0.0.2:4222,")
    assert connect_options(settings, "gateway")["servers"] == [
        "nats://10.0.0.1:4222",
        "nats://10.0.0.2:4222",
    ]


async def test_a_service_connects_when_the_first_listed_node_is_down(nats_url: str) -> None:
    down = f"nats://127.0.0.1:{free_port()}"
    # Both orders: nats-py may shuffle the list, and either way it must find the live node.
    for listed in (f"{down},{nats_url}", f"{nats_url},{down}"):
        nc = await connect(ServiceSettings(NATS_URL=listed), "nats-urls-test")
        try:
            assert nc.is_connected
            assert nc.connected_url is not None
            assert f"{nc.connected_url.hostname}:{nc.connected_url.port}" in nats_url
        finally:
            await nc.close()
