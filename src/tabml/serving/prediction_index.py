"""The feedback index: the last N recorded predictions of a process, by (request id, index).

A label arriving on POST /feedback needs the probability and model version of the prediction it
labels. They live in a ring of fixed-size entries (one numpy structured array, 19 bytes each: a
64-bit key hashed from request id and index, the probability, the model version's slot and a
"labelled" flag), so 500,000 predictions take 9.5 MB and no per-request Python objects stay
alive. With several workers the array is a memory-mapped file in the workers' shared directory:
a label that reaches another worker than the one that served the prediction is found there.

One thread appends (the live monitor's); any thread may look up. A slot being reused has its key
cleared first and set last, and a lookup re-reads the key after the entry, so a concurrent reuse
reads as "not found", never as another prediction's probability.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ENTRY = np.dtype([("key", "<u8"), ("probability", "<f8"), ("version", "<u2"), ("labelled", "u1")])
#: Keys of one request's records are its hash plus index times this odd constant (mod 2^64).
_STEP = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1
#: Up to this many keys a lookup scans the ring once per key; more sort it once.
_SCAN_KEYS = 16


def _request_hash(request_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")


def prediction_key(request_id: str, index: int) -> int:
    """The key of one record's prediction (never 0, which marks an empty slot)."""
    return ((_request_hash(request_id) + index * _STEP) & _MASK) or 1


def prediction_keys(
    request_ids: Sequence[str], counts: Sequence[int], firsts: Sequence[int]
) -> np.ndarray:
    """Keys of records first..first+count-1 of each request, in order, as `prediction_key`
    computes them: one hash per request, then numpy for all records of all requests at once."""
    hashes = np.fromiter(map(_request_hash, request_ids), dtype=np.uint64, count=len(request_ids))
    sizes = np.asarray(counts, dtype=np.intp)
    starts = np.repeat(np.cumsum(sizes) - sizes - np.asarray(firsts, dtype=np.intp), sizes)
    indices = (np.arange(starts.size) - starts).astype(np.uint64)
    keys = np.repeat(hashes, sizes) + indices * np.uint64(_STEP)  # wraps around mod 2^64
    keys[keys == 0] = 1
    return keys


class PredictionRing:
    def __init__(self, entries: np.ndarray) -> None:
        self.entries = entries
        self._next = 0

    @classmethod
    def in_memory(cls, capacity: int) -> PredictionRing:
        return cls(np.zeros(capacity, dtype=ENTRY))

    @classmethod
    def create(cls, path: Path, capacity: int) -> PredictionRing:
        """A new ring in a file other processes can `attach` to."""
        return cls(np.memmap(path, dtype=ENTRY, mode="w+", shape=(capacity,)))

    @classmethod
    def attach(cls, path: Path) -> PredictionRing:
        """Another process's ring: for lookups and marking labels, never for appending."""
        return cls(np.memmap(path, dtype=ENTRY, mode="r+"))

    @property
    def capacity(self) -> int:
        return len(self.entries)

    @property
    def nbytes(self) -> int:
        return self.entries.nbytes

    def append(self, keys: np.ndarray, probabilities: np.ndarray, versions: np.ndarray) -> None:
        """Record predictions (with their version slots), overwriting the oldest once full;
        single writer."""
        keys, probabilities = keys[-self.capacity :], probabilities[-self.capacity :]
        versions = versions[-self.capacity :]
        start, count = self._next, len(keys)
        first = min(count, self.capacity - start)  # up to the end, then from slot 0
        for into, part in (
            (slice(start, start + first), slice(0, first)),
            (slice(0, count - first), slice(first, count)),
        ):
            entries = self.entries[into]
            entries["key"] = 0
            entries["probability"] = probabilities[part]
            entries["version"] = versions[part]
            entries["labelled"] = 0
            entries["key"] = keys[part]
        self._next = (start + count) % self.capacity

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each key, its slot (-1 when absent) and a copy of its entry."""
        stored = self.entries["key"]
        if len(keys) <= _SCAN_KEYS:
            slots = np.array(
                [next(iter(np.flatnonzero(stored == key)), -1) for key in keys], dtype=np.intp
            )
        else:
            order = np.argsort(stored)
            ordered = stored[order]
            at = np.minimum(np.searchsorted(ordered, keys), len(ordered) - 1)
            slots = np.where(ordered[at] == keys, order[at], -1)
        found = slots >= 0
        entries = np.zeros(len(keys), dtype=ENTRY)
        entries[found] = self.entries[slots[found]]
        # Reused meanwhile? The writer clears a key before it changes the rest of the entry.
        now = self.entries["key"][np.maximum(slots, 0)]
        slots[found & ((entries["key"] != keys) | (now != keys))] = -1
        return slots, entries

    def mark_labelled(self, slots: np.ndarray) -> None:
        self.entries["labelled"][slots] = 1
