"""proxyd.policy.relay: how the one upstream answer of a miss that is not stored is cut back
to what the client asked for (issue 22). Pure: no servers."""

from __future__ import annotations

import pytest

from proxyd.policy.relay import RelayPlan, framing_problem, relay_plan


def test_statuses_other_than_206_are_relayed_as_they_are() -> None:
    assert relay_plan("GET", None, 200, {}) == RelayPlan(200)
    assert relay_plan("GET", "bytes=5-9", 200, {}) == RelayPlan(200)  # Range ignored: allowed
    assert relay_plan("GET", None, 304, {}) == RelayPlan(304)
    assert relay_plan("HEAD", None, 404, {}) == RelayPlan(404, body=False)
    unsatisfied = {"Content-Range": "bytes */10"}
    assert relay_plan("GET", "bytes=20-", 416, unsatisfied) == RelayPlan(416, "bytes */10")


def test_a_206_of_the_whole_object_answers_a_plain_get_as_a_200() -> None:
    whole = {"Content-Range": "bytes 0-9/10"}
    assert relay_plan("GET", None, 206, whole) == RelayPlan(200, length=10)
    # Only the start of a longer object: it cannot answer a request for all of it.
    assert relay_plan("GET", None, 206, {"Content-Range": "bytes 0-9/100"}) is None


def test_a_head_gets_the_length_of_the_whole_object() -> None:
    part = {"Content-Range": "bytes 0-65535/1000000"}
    assert relay_plan("HEAD", None, 206, part) == RelayPlan(200, length=1000000, body=False)


def test_a_single_range_is_cut_out_of_the_block_aligned_answer() -> None:
    block = {"Content-Range": "bytes 65536-131071/200000"}
    plan = relay_plan("GET", "bytes=70000-70999", 206, block)
    assert plan == RelayPlan(206, "bytes 70000-70999/200000", skip=70000 - 65536, length=1000)
    # A suffix range, resolved against the size the answer gives.
    tail = {"Content-Range": "bytes 0-99/100"}
    assert relay_plan("GET", "bytes=-10", 206, tail) == RelayPlan(
        206, "bytes 90-99/100", skip=90, length=10
    )


def test_what_the_answer_cannot_give_is_sent_again_as_it_is() -> None:
    block = {"Content-Range": "bytes 0-65535/200000"}
    assert relay_plan("GET", "bytes=65000-70000", 206, block) is None  # past the answer
    assert relay_plan("GET", "bytes=0-9,100-109", 206, block) is None  # several ranges
    assert relay_plan("GET", None, 206, {"Content-Range": "bytes 0-9/*"}) is None
    assert relay_plan("GET", None, 206, {}) is None
    # An invalid Range is ignored: the whole object, when the answer holds all of it.
    whole = {"Content-Range": "bytes 0-99/100"}
    assert relay_plan("GET", "bytes=x", 206, whole) == RelayPlan(200, length=100)
    assert relay_plan("GET", "bytes=x", 206, block) is None


@pytest.mark.parametrize(
    ("status", "headers", "body_length", "problem"),
    [
        (206, [("Content-Range", "bytes 4-9/10")], 5, "covers 6 bytes but its body has 5"),
        (206, [("Content-Range", "bytes 4-9/10")], 7, "covers 6 bytes but its body has 7"),
        (206, [("Content-Range", "bytes 4-9/10")], 6, None),
        (206, [("Content-Range", "bytes 4-9/10")], None, None),  # length unknown: streamed
        (206, [("Content-Type", "multipart/byteranges; boundary=x")], 100, None),
        (200, [("Content-Range", "bytes 4-9/10")], 5, None),  # a 200's body is the object
    ],
)
def test_a_206_must_carry_the_bytes_its_content_range_names(
    status: int, headers: list[tuple[str, str]], body_length: int | None, problem: str | None
) -> None:
    found = framing_problem(status, headers, body_length)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.endswith(problem)


def test_a_range_starting_where_the_answer_starts_is_relayed() -> None:
    block = {"Content-Range": "bytes 1048576-2097151/3000000"}
    assert relay_plan("GET", "bytes=1048576-1048585", 206, block) == RelayPlan(
        206, "bytes 1048576-1048585/3000000", skip=0, length=10
    )
    assert relay_plan("GET", "bytes=1048566-1048585", 206, block) is None  # starts before
    assert relay_plan("GET", "bytes=2097142-2097151", 206, block) == RelayPlan(
        206, "bytes 2097142-2097151/3000000", skip=1048566, length=10
    )
    assert relay_plan("GET", "bytes=2097142-2097152", 206, block) is None  # ends after


def test_a_200_never_carries_a_content_range_and_too_many_ranges_get_the_whole() -> None:
    whole = {"Content-Range": "bytes 0-999/1000"}
    assert relay_plan("GET", None, 200, whole) == RelayPlan(200)
    assert relay_plan("GET", None, 416, {"Content-Range": "bytes */10"}) == RelayPlan(
        416, "bytes */10"
    )
    ranges = [f"{n * 10}-{n * 10 + 1}" for n in range(65)]
    at_limit, over = "bytes=" + ",".join(ranges[:64]), "bytes=" + ",".join(ranges)
    # At the default limit of 64 several ranges are honoured (not by this relay: None);
    # one more and the Range field is ignored, so the whole object answers.
    assert relay_plan("GET", at_limit, 206, whole) is None
    assert relay_plan("GET", over, 206, whole) == RelayPlan(200, length=1000)
