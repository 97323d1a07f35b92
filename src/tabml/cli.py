"""`tabml`: the project's general command, one subcommand per task.

    tabml init-dataset PATH.csv --label COLUMN --name NAME    # bring your own CSV

(The pipeline's own command line is `python src/train.py`; serving, the registry, monitoring and
the loop have theirs: `tabml-serve`, `tabml-registry`, `tabml-monitor`, `tabml-loop`.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabml.errors import TabmlError


def _add_init_dataset(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "init-dataset",
        help="infer a dataset's contract from a CSV and make it a pipeline dataset",
        description="Inspect a CSV (with a header row), infer its data contract and write "
        "conf/dataset/NAME.yaml; copy the CSV to datasets/NAME/ and track it with DVC. Then "
        "`python src/train.py dataset=NAME` trains on it and `tabml-serve` serves the model. "
        "Nothing is written when the CSV cannot be used (docs/bring-your-own-csv.md).",
    )
    parser.add_argument("csv", type=Path, metavar="PATH.csv", help="the training data")
    parser.add_argument("--label", required=True, help="the label column (two classes)")
    parser.add_argument("--name", required=True, help="dataset name: lower case, digits, '_'")
    parser.add_argument(
        "--test",
        type=Path,
        metavar="PATH.csv",
        help="a test file with the same header (default: a stratified holdout of PATH.csv)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="without --test: the share of rows held out as the test set (default 0.2)",
    )
    parser.add_argument(
        "--positive",
        help="the label value that is the positive class (default: 1, true, yes, ... when the "
        "values say so, else the rarer class)",
    )
    parser.add_argument(
        "--drop-unlabelled",
        action="store_true",
        help="keep rows with a missing label out of training instead of refusing the file",
    )
    parser.add_argument("--separator", help="field separator (default: sniffed from the file)")
    parser.set_defaults(run=_run_init_dataset)


def _run_init_dataset(args: argparse.Namespace) -> int:
    from tabml.dataset_init import DatasetRequest, create_dataset
    from tabml.dataset_report import describe

    request = DatasetRequest(
        csv=args.csv,
        label=args.label,
        name=args.name,
        test_csv=args.test,
        positive=args.positive,
        drop_unlabelled=args.drop_unlabelled,
        separator=args.separator,
        test_holdout=args.test_fraction,
    )
    print(describe(create_dataset(request)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tabml", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_init_dataset(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except TabmlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
