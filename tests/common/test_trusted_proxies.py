"""BYOROUTER_TRUSTED_PROXIES: a list of IPs and CIDRs; a typo stops the service at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from byorouter_common.settings import ServiceSettings


def test_trusted_proxies_are_read_as_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BYOROUTER_TRUSTED_PROXIES", " 10.0.0.0/8, 127.0.0.1 ,fd00::/8")
    assert ServiceSettings().trusted_proxy_list == ["10.0.0.0/8", "127.0.0.1", "fd00::/8"]


def test_nobody_is_trusted_by_default() -> None:
    assert ServiceSettings().trusted_proxy_list == []


@pytest.mark.parametrize("value", ["*", "proxy.internal", "10.0.0.0/33", "127.0.0.1;10.0.0.1"])
def test_an_entry_that_is_not_an_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("BYOROUTER_TRUSTED_PROXIES", value)
    with pytest.raises(ValidationError, match="not an IP address or CIDR"):
        ServiceSettings()
