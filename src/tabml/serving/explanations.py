"""The explanation option of the prediction endpoints: `POST /predict?explain=true&top_k=K`, and
`"parameters": {"explain": true, "top_k": K}` in an Open Inference Protocol infer request (the
protocol's place for request parameters).

Each prediction then carries its TreeSHAP explanation by raw input column (`tabml.explain`):
the base value and the K largest |contributions| (all of them without `top_k`, or with 0).
A request without the option takes the unchanged path: same bytes, no extra work.

Query values are strict, so nothing a client meant is silently read otherwise: `explain` is
`true` or `false`, `top_k` a non-negative integer in decimal digits, each at most once;
anything else is a 422 naming the parameter. `top_k` only shapes an explanation: without
`explain=true` it has no effect (it is still validated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from tabml.serving.predictor import RequestRejected

EXPLAIN, TOP_K = "explain", "top_k"


@dataclass(frozen=True)
class ExplainOptions:
    """An explanation was asked for: the `top_k` largest contributions (0: all features)."""

    top_k: int = 0


def _invalid(name: str, value: str, message: str, kind: str) -> RequestRejected:
    return RequestRejected(
        422,
        [
            {
                "index": None,
                "field": name,
                "type": kind,
                "message": f"query parameter {name!r}: {message}",
                "input": value,
            }
        ],
        1,
    )


def options_from_query(query_string: bytes) -> ExplainOptions | None:
    """The explanation asked for in a /predict query string, or None. Raises RequestRejected
    (422) naming `explain` or `top_k`. Other query parameters are ignored, as before."""
    if not query_string:
        return None
    seen: dict[str, str] = {}
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name not in (EXPLAIN, TOP_K):
            continue
        if name in seen:
            raise _invalid(name, value, "given more than once", "duplicate_parameter")
        seen[name] = value
    explain = seen.get(EXPLAIN, "false")
    if explain not in ("true", "false"):
        raise _invalid(EXPLAIN, explain, "must be true or false", "bool_parsing")
    top_k = seen.get(TOP_K, "0")
    if top_k.startswith("-") and top_k[1:].isascii() and top_k[1:].isdigit():
        raise _invalid(TOP_K, top_k, "must be 0 or more (0: every feature)", "greater_than_equal")
    if not (top_k.isascii() and top_k.isdigit()):
        raise _invalid(
            TOP_K,
            top_k,
            "must be a non-negative integer (the number of largest contributions; 0: all)",
            "int_parsing",
        )
    return ExplainOptions(int(top_k)) if explain == "true" else None


def options_from_parameters(parameters: Any) -> ExplainOptions | None:
    """The explanation asked for in a validated OIP `parameters` object, or None."""
    if parameters is None or not parameters.explain:
        return None
    return ExplainOptions(parameters.top_k or 0)


#: The query parameters of /predict in OpenAPI.
QUERY_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": EXPLAIN,
        "in": "query",
        "required": False,
        "description": "add each prediction's TreeSHAP explanation by raw input column "
        "(`explanation`: base value and contributions; they sum to the logit of the "
        "probability)",
        "schema": {"type": "boolean", "default": False},
    },
    {
        "name": TOP_K,
        "in": "query",
        "required": False,
        "description": "with explain=true: only the K largest |contributions|, largest first "
        "(0, the default: every feature); no effect without explain=true",
        "schema": {"type": "integer", "minimum": 0, "default": 0},
    },
]
