"""What `tabml init-dataset` prints: the inferred contract, what to review, what to run next."""

from __future__ import annotations

from pathlib import Path

from tabml.contract import ColumnSpec
from tabml.dataset_init import CreatedDataset

MAX_SHOWN_LEVELS = 6


def _rule(spec: ColumnSpec) -> str:
    if spec.type == "category":
        levels = spec.categories or []
        shown = ", ".join(levels[:MAX_SHOWN_LEVELS]) + (", ..." if len(levels) > 6 else "")
        rule = f"{len(levels)} level(s): {shown}"
    else:
        rule = f"range [{spec.min:g}, {spec.max:g}]"
    return rule + ("; may be missing" if spec.nullable else "")


def describe(created: CreatedDataset) -> str:
    inferred, config = created.inferred, created.config
    label = inferred.label
    counts = inferred.class_counts
    name = config["name"]
    split = (
        f"test set {config['files']['test']['name']}"
        if config["test_holdout"] is None
        else f"a stratified holdout of {config['test_holdout']:.0%} of the rows (seeded)"
    )
    width = max(len(spec.name) for spec in inferred.columns)
    lines = [
        f"dataset {name}: {inferred.rows} rows, separator {inferred.separator!r}, missing "
        f"values written {inferred.missing_marker!r}",
        f"label {label.column}: positive {label.positive!r} ({counts[label.positive]} rows), "
        f"negative {label.negative!r} ({counts[label.negative]} rows)"
        + (
            f", {len(inferred.unlabelled_lines)} unlabelled (left out)"
            if inferred.unlabelled_lines
            else ""
        ),
        f"test: {split}",
        f"columns ({len(inferred.columns)}):",
        *(f"  {s.name:<{width}}  {s.type:<8}  {_rule(s)}" for s in inferred.columns),
    ]
    if inferred.review:
        lines += ["review (edit the file if the inference is wrong):"]
        lines += [f"  - {finding}" for finding in inferred.review]
    lines += [
        f"wrote {created.config_file}; copied the data to {created.data_dir}/, tracked by "
        f"{created.dvc_file}",
        "next:",
        f"  git add {created.config_file} {created.dvc_file} {created.data_dir.parent}/.gitignore",
        f"  python src/train.py dataset={name}   # then commit dvc.lock, params.yaml and "
        f"{Path(config['reference_profile']).parent}/",
        "  tabml-serve",
    ]
    return "\n".join(lines)
