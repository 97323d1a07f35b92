"""Helpers for the live monitoring tests: read /metrics (a scrape counts every request answered
before it; other workers' windows arrive within a second: tests.support.waiting), make drift."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

#: Features `drifted` changes, and how.
DRIFTED_FEATURES = ("age", "marital_status")


def scrape(url: str) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """/metrics as sample name → {label set → value}."""
    samples: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def sample(url: str, name: str, **labels: str) -> float | None:
    return scrape(url).get(name, {}).get(frozenset(labels.items()))


def by_label(samples: dict[frozenset[tuple[str, str]], float], label: str) -> dict[str, float]:
    """One label's value → sample value (for series that differ by that label only)."""
    return {dict(labels)[label]: value for labels, value in samples.items()}


def drifted(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same census rows, 15 years older (within the contract's range) and with half of them
    never married: a shift of two features, the others untouched."""
    return [
        {
            **r,
            "age": min(r["age"] + 15, 90),
            **({"marital_status": "Never-married"} if i % 2 else {}),
        }
        for i, r in enumerate(records)
    ]
