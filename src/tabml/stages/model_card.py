"""model_card: write the model card (Markdown and HTML) from the pipeline's outputs.

Only what the inputs determine goes in, so the card is byte-reproducible in dvc.lock; the git
commit and the MLflow run are added to the copies logged and served (`tabml.model_card`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tabml.atomic import write_text_atomic
from tabml.config import load_params
from tabml.data import dir_md5, file_md5
from tabml.model_card import CardInputs, render_html, render_markdown
from tabml.model_metadata import ModelMetadata
from tabml.stages._runner import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--metadata", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--slices", type=Path, required=True)
    parser.add_argument("--validation", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--html", type=Path, required=True)
    args = parser.parse_args()

    params = load_params()
    inputs = CardInputs(
        params=params,
        metadata=ModelMetadata.load(args.metadata),
        metrics=json.loads(args.metrics.read_text()),
        slices=json.loads(args.slices.read_text()),
        validation=json.loads(args.validation.read_text()),
        data_md5=dir_md5(args.data),
        model_md5=file_md5(args.model),
    )
    markdown_card = render_markdown(inputs)
    write_text_atomic(args.markdown, markdown_card)
    write_text_atomic(args.html, render_html(markdown_card, params.model_card.title))
    print(f"model card: {args.markdown}, {args.html}")


if __name__ == "__main__":
    run_stage("model_card", main)
