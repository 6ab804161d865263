"""Which client a request is logged as behind trusted load balancers:
:func:`proxyd.policy.clients.client_address`, pure. The wire is in
tests/test_proxyd_routing.py (test_a_trusted_balancers_clients_are_logged)."""

from __future__ import annotations

import ipaddress

import pytest

from proxyd.policy.clients import client_address
from proxyd.settings import ConfigError, load_settings

BALANCERS = (ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("2001:db8::1"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "logged"),
    [
        # Not from a trusted proxy: the peer, whatever the field says.
        ("198.51.100.9", ["203.0.113.7"], "198.51.100.9"),
        (None, ["203.0.113.7"], None),
        # From a balancer: the address it received the request from.
        ("10.0.0.5", ["203.0.113.7"], "203.0.113.7"),
        ("2001:db8::1", ["2001:db8:ffff::2"], "2001:db8:ffff::2"),
        # Read from the right; what the client itself wrote further left is not believed.
        ("10.0.0.5", ["1.2.3.4, 203.0.113.7"], "203.0.113.7"),
        # Two trusted hops, then the client; several fields are one list.
        ("10.0.0.5", ["203.0.113.7", "10.0.0.9"], "203.0.113.7"),
        ("10.0.0.5", ["203.0.113.7 , 10.0.0.9"], "203.0.113.7"),
        # Nothing but trusted proxies: the furthest of them.
        ("10.0.0.5", ["10.0.0.7, 10.0.0.9"], "10.0.0.7"),
        # No field, or an entry that is no address: the last proxy believed.
        ("10.0.0.5", [], "10.0.0.5"),
        ("10.0.0.5", ["unknown"], "10.0.0.5"),
        ("10.0.0.5", ["203.0.113.7, _hidden, 10.0.0.9"], "10.0.0.9"),
    ],
)
def test_client_address(peer: str | None, forwarded: list[str], logged: str | None) -> None:
    headers = [("X-Forwarded-For", value) for value in forwarded]
    assert client_address(peer, headers, BALANCERS) == logged


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_address("10.0.0.5", [("X-Forwarded-For", "203.0.113.7")], ()) == "10.0.0.5"


def test_trusted_proxies_setting() -> None:
    settings, _ = load_settings(None, {"PROXYD_TRUSTED_PROXIES": "10.0.0.5, 192.168.1.0/24"}, {})
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.5/32", "192.168.1.0/24"]
    with pytest.raises(ConfigError, match="'nonsense' is not an IP address or network"):
        load_settings(None, {"PROXYD_TRUSTED_PROXIES": "10.0.0.5, nonsense"}, {})
