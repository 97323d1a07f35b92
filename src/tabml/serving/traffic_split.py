"""Which model version answers a request: the route, and sticky canary assignment.

A route (`TABML_ROUTE`, `tabml-serve --route`) is one of

* `champion`: the champion answers every request (a loaded challenger stays idle);
* `canary:<fraction>`: the challenger answers that share of requests, the champion the rest;
* `shadow`: the champion answers every request, and the challenger scores a copy of it off
  the response path (`tabml.serving.shadow`) for the prediction log only.

Without a challenger every route is `champion`.

**Stickiness.** A request that carries `X-Routing-Key` (a user, session or account id; any
bytes) is assigned by a hash of the key, so the same key gets the same version on every request,
in every worker and replica, across restarts:

    h = int.from_bytes(blake2b(key, digest_size=8).digest(), "big")     # 64 bits
    challenger  ⇔  h / 2**64 < fraction

`key` is the header value's bytes as received. The hash is unsalted, so raising the fraction
(0.1 → 0.5) only moves keys from the champion to the challenger: no key that was on the
challenger goes back. A request without the header is assigned at random with the same
probability (not sticky). Fraction 0 sends nothing to the challenger, fraction 1 everything;
the comparison is done in integers (`h < fraction · 2**64`), so both edges are exact.
"""

from __future__ import annotations

import math
import random
from contextvars import ContextVar
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Literal

#: The request header whose value pins a caller to a version.
ROUTING_KEY_HEADER = "X-Routing-Key"
#: The routing key of the request being served (set by the request middleware), None if absent.
routing_key: ContextVar[bytes | None] = ContextVar("routing_key", default=None)
Mode = Literal["champion", "canary", "shadow"]
CHAMPION_ONLY: Mode = "champion"
CANARY: Mode = "canary"
SHADOW: Mode = "shadow"

_SPACE = 1 << 64


def key_position(key: bytes) -> int:
    """The key's place in [0, 2**64): its 8-byte BLAKE2b digest (`digest_size=8`, which is not
    a truncation of the default 64-byte digest) read as a big-endian integer."""
    return int.from_bytes(blake2b(key, digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Route:
    """How requests are split between the champion and the challenger."""

    mode: Mode = CHAMPION_ONLY
    #: share of requests the challenger answers (canary only; 0 otherwise)
    fraction: float = 0.0
    _bound: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in (CHAMPION_ONLY, CANARY, SHADOW):
            raise ValueError(f"unknown route mode {self.mode!r}")
        if not (math.isfinite(self.fraction) and 0.0 <= self.fraction <= 1.0):
            raise ValueError(f"canary fraction {self.fraction} is not between 0 and 1")
        if self.mode != CANARY and self.fraction != 0.0:
            raise ValueError(f"a {self.mode} route takes no fraction")
        # fraction · 2**64 is exact in floating point (a power of two); 1.0 → 2**64 > every h
        object.__setattr__(self, "_bound", int(self.fraction * _SPACE))

    def __str__(self) -> str:
        return f"{CANARY}:{self.fraction:g}" if self.mode == CANARY else self.mode

    @property
    def shadow(self) -> bool:
        return self.mode == SHADOW

    def to_challenger(self, key: bytes | None) -> bool:
        """Whether the challenger answers a request with routing key `key` (None: no key)."""
        if self._bound == 0:
            return False
        if self._bound == _SPACE:
            return True
        position = key_position(key) if key is not None else random.getrandbits(64)
        return position < self._bound


def parse_route(text: str | Route) -> Route:
    """`champion`, `canary:<fraction>` (0 ≤ fraction ≤ 1, e.g. `canary:0.1`) or `shadow`."""
    if isinstance(text, Route):
        return text
    value = str(text).strip()
    if value == CHAMPION_ONLY:
        return Route(CHAMPION_ONLY)
    if value == SHADOW:
        return Route(SHADOW)
    mode, colon, fraction = value.partition(":")
    if mode == CANARY and colon:
        try:
            share = float(fraction)
        except ValueError:
            share = math.nan
        if math.isfinite(share) and 0.0 <= share <= 1.0:
            return Route(CANARY, share)
        raise ValueError(f"route {value!r}: the canary fraction must be a number from 0 to 1")
    raise ValueError(
        f"route {value!r}: expected champion, canary:<fraction> (e.g. canary:0.1) or shadow"
    )
