"""Container budgets: size added on top of the base image, and container start → /ready.

Builds the serving image with docker/build-image.sh (the same way users and tests do), then
starts it several times and reports the median time from the container's start to the first
200 from /ready, next to the image-size breakdown by layer. Saves bench/results/container.json.

usage: python bench/container_benchmark.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.support.docker import (  # noqa: E402
    BASE_IMAGE,
    build_image,
    docker,
    start_container,
)

BUDGETS = {"added_mb": 300.0, "start_to_ready_s": 3.0}


def added_layers(tag: str) -> list[dict[str, object]]:
    def history(ref: str) -> list[dict]:
        out = docker("history", "--no-trunc", "--human=false", "--format", "{{json .}}", ref)
        return [json.loads(line) for line in out.stdout.splitlines()]

    ours, base = history(tag), history(BASE_IMAGE)
    return [
        {"mb": round(int(h["Size"]) / 1e6, 1), "created_by": h["CreatedBy"][:120]}
        for h in reversed(ours[: len(ours) - len(base)])
        if int(h["Size"])
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/container.json")
    args = parser.parse_args()

    tag = f"tabml-serve-bench:{uuid.uuid4().hex[:10]}"
    result = build_image(REPO_ROOT, tag)
    if result.returncode != 0:
        sys.exit(f"build failed:\n{result.stdout[-4000:]}")
    try:
        layers = added_layers(tag)
        starts = []
        for _ in range(args.runs):
            container = start_container(tag)
            starts.append(container)
            docker("rm", "-f", container.id, check=False)
    finally:
        docker("image", "rm", "--no-prune", tag, check=False)

    report = {
        "benchmark": "serving container",
        "base_image": BASE_IMAGE,
        "layers_added": layers,
        "added_mb": round(sum(layer["mb"] for layer in layers), 1),
        "start_to_ready_s": [round(c.start_to_ready_s, 3) for c in starts],
        "run_to_ready_s": [round(c.run_to_ready_s, 3) for c in starts],
        "budgets": BUDGETS,
    }
    report["median_start_to_ready_s"] = round(statistics.median(report["start_to_ready_s"]), 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for layer in layers:
        print(f"{layer['mb']:8.1f} MB  {layer['created_by'][:80]}")
    print(
        f"{report['added_mb']:8.1f} MB  added on top of {BASE_IMAGE} "
        f"(budget {BUDGETS['added_mb']:.0f})"
    )
    print(
        f"start → /ready median {report['median_start_to_ready_s']:.2f} s "
        f"(budget {BUDGETS['start_to_ready_s']:.0f}); runs {report['start_to_ready_s']}"
    )


if __name__ == "__main__":
    main()
