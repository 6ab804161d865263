"""Edges of the proxy's policy that mutation testing (bench/mutation/run.py) found untested:
each test here kills mutants that survived the rest of the suite."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from proxyd.policy.access import AuthDecisionCache, AuthEntry
from proxyd.policy.keys import credential_fingerprint, split_signing_params

SIGNING = ("X-Amz-*",)


def fingerprint_of(query: str) -> str | None:
    _, signing = split_signing_params(query, SIGNING)
    return credential_fingerprint({}, signing)


@pytest.mark.parametrize(
    "params",
    [
        # Same value, different names: ordered by name, not by value.
        ["X-Amz-Credential=1", "X-Amz-Date=1", "X-Amz-Signature=1"],
        # Same name, different values: ordered by value too.
        ["X-Amz-Signature=3", "X-Amz-Signature=1", "X-Amz-Signature=2"],
        # A name without "=" beside the same name with values (None cannot be compared
        # with a string: the sort must not try).
        ["X-Amz-Signature", "X-Amz-Signature=b", "X-Amz-Signature=a"],
    ],
)
def test_signing_parameters_in_any_order_are_one_credential(params: list[str]) -> None:
    """A client may send its signing parameters in any order: the credential is the set,
    so every order has one fingerprint (and one authorisation decision)."""
    prints = {fingerprint_of("&".join(order)) for order in itertools.permutations(params)}
    assert len(prints) == 1
    assert None not in prints
    # ... and a different set is a different credential.
    assert fingerprint_of("&".join(params[:-1])) not in prints


def test_auth_decisions_cannot_be_changed_once_cached() -> None:
    """A cached decision is shared by every request with that credential: no request may
    alter it in place (turn a denial into an allowance for the next one)."""
    cache = AuthDecisionCache(max_entries=4)
    denial = AuthEntry(allowed=False, status=403, validator='"v1"', decided_at=0.0)
    cache.put("credential", "key", denial)
    with pytest.raises(dataclasses.FrozenInstanceError):
        denial.allowed = True  # type: ignore[misc]
    assert hash(denial) == hash(AuthEntry(False, 403, '"v1"', 0.0))
