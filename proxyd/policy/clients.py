"""Which client a request is logged as, behind load balancers proxyd trusts. Pure.

A load balancer (HAProxy's ``option forwardfor``, nginx's ``proxy_add_x_forwarded_for``)
appends the address it received a request from to ``X-Forwarded-For``; proxyd then sees the
balancer as its peer. Only a peer listed in ``trusted_proxies`` is believed, and only as far
as the chain is made of trusted proxies: read from the right, the first address that is not
a trusted proxy is the client (entries further left were written by whoever sent the
request, and can say anything). Used for the access log; no access decision depends on it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

from proxyd.policy import Headers, field_values, header_pairs

if TYPE_CHECKING:
    from proxyd.settings import IPNetwork

__all__ = ["client_address"]


def _trusted(address: str, trusted: Sequence[IPNetwork]) -> bool | None:
    """Whether ``address`` is a trusted proxy; None if it is no IP address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return any(ip in network for network in trusted)


def client_address(peer: str | None, headers: Headers, trusted: Sequence[IPNetwork]) -> str | None:
    """The address to log a request as: its peer, or, when the peer is a trusted proxy, the
    nearest address in ``X-Forwarded-For`` (all its fields, in order) that is not one. An
    entry that is no IP address ends the walk at the last proxy believed."""
    if peer is None or not trusted or not _trusted(peer, trusted):
        return peer
    chain = [
        entry.strip()
        for value in field_values(header_pairs(headers), "X-Forwarded-For")
        for entry in value.split(",")
    ]
    client = peer
    for entry in reversed(chain):
        believed = _trusted(entry, trusted)
        if believed is None:
            return client
        client = entry
        if not believed:
            return client
    return client
