"""Routes and sticky canary assignment (`tabml.serving.traffic_split`)."""

from __future__ import annotations

import random
from hashlib import blake2b

import pytest

from tabml.serving.traffic_split import Route, key_position, parse_route


@pytest.mark.parametrize(
    ("text", "mode", "fraction"),
    [
        ("champion", "champion", 0.0),
        ("shadow", "shadow", 0.0),
        ("canary:0.1", "canary", 0.1),
        (" canary:0.25 ", "canary", 0.25),
        ("canary:0", "canary", 0.0),
        ("canary:1", "canary", 1.0),
        ("canary:1e-3", "canary", 0.001),
    ],
)
def test_routes_parse(text: str, mode: str, fraction: float) -> None:
    route = parse_route(text)
    assert (route.mode, route.fraction) == (mode, fraction)
    assert parse_route(str(route)) == route


@pytest.mark.parametrize(
    "text",
    ["", "canary", "canary:", "canary:x", "canary:-0.1", "canary:1.5", "canary:nan",
     "canary:inf", "Champion", "shadow:0.1", "blue-green"],
)  # fmt: skip
def test_bad_routes_are_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"canary|champion"):
        parse_route(text)


def test_only_a_canary_takes_a_fraction() -> None:
    with pytest.raises(ValueError, match="takes no fraction"):
        Route("shadow", 0.5)
    assert str(Route("canary", 0.1)) == "canary:0.1" and str(Route()) == "champion"


def test_the_documented_hash() -> None:
    key = b"user-42"
    digest = blake2b(key, digest_size=8).digest()
    assert key_position(key) == int.from_bytes(digest, "big")
    route = Route("canary", 0.2)
    assert route.to_challenger(key) == (key_position(key) / 2**64 < 0.2)


def test_sticky_keys_always_get_the_same_answer_and_the_share_is_the_fraction() -> None:
    route = parse_route("canary:0.2")
    keys = [f"customer-{i}".encode() for i in range(20_000)]
    first = [route.to_challenger(k) for k in keys]
    assert first == [route.to_challenger(k) for k in keys]
    share = sum(first) / len(first)
    assert abs(share - 0.2) < 0.01, share  # binomial sd ≈ 0.003


def test_raising_the_fraction_only_moves_keys_to_the_challenger() -> None:
    keys = [f"k{i}".encode() for i in range(5_000)]
    small = {k for k in keys if Route("canary", 0.1).to_challenger(k)}
    large = {k for k in keys if Route("canary", 0.5).to_challenger(k)}
    assert small < large


def test_requests_without_a_key_are_split_at_random() -> None:
    random.seed(7)
    route = Route("canary", 0.3)
    share = sum(route.to_challenger(None) for _ in range(20_000)) / 20_000
    assert abs(share - 0.3) < 0.015


def test_edges_are_exact() -> None:
    keys = [f"{i}".encode() for i in range(2_000)] + [None] * 2_000
    assert not any(Route("canary", 0.0).to_challenger(k) for k in keys)
    assert all(Route("canary", 1.0).to_challenger(k) for k in keys)
    for mode in ("champion", "shadow"):
        assert not any(Route(mode).to_challenger(k) for k in keys)  # type: ignore[arg-type]
    # the largest position still goes to the challenger at fraction 1, the smallest never at 0
    assert Route("canary", 1.0).to_challenger(b"\xff" * 8)
