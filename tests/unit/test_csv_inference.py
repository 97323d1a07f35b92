"""Contract inference from a user's CSV (`tabml init-dataset`): what it infers, what it asks the
user to review, and the message of every kind of CSV it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tabml.csv_inference import InferenceError, infer_contract
from tabml.csv_reading import CsvFormatError, read_csv_table


def _write(tmp_path: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _infer(tmp_path: Path, text: str | bytes, label: str = "y", **options):
    return infer_contract(read_csv_table(_write(tmp_path, text)), label, **options)


MIXED = "age,city,score,y\n" + "".join(
    f"{20 + i},{['Oslo', 'Rome', 'Lima'][i % 3]},{i / 4:.2f},{'yes' if i % 3 else 'no'}\n"
    for i in range(30)
)


def test_types_ranges_levels_and_label(tmp_path):
    inferred = _infer(tmp_path, MIXED)
    age, city, score = inferred.columns
    assert (age.type, age.min, age.max) == ("int", 17.0, 52.0)  # 20..49 widened by 10 % of 29
    assert (city.type, city.categories) == ("category", ["Lima", "Oslo", "Rome"])
    assert (score.type, score.min, score.max) == ("float", 0.0, 7.975)  # never below 0
    assert not any(c.nullable for c in inferred.columns)
    assert (inferred.label.positive, inferred.label.negative) == ("yes", "no")
    assert inferred.class_counts == {"no": 10, "yes": 20}
    assert inferred.separator == "," and inferred.rows == 30
    assert inferred.file_columns == ["age", "city", "score", "y"]


def test_missing_marker_and_nullable_columns(tmp_path):
    text = "a,b,y\n1,x,0\nNA,y,1\n3,NA,0\n4,x,1\n"
    inferred = _infer(tmp_path, text)
    assert inferred.missing_marker == "NA"
    # integers with a missing value are typed float (an int column cannot hold a missing value)
    assert [(c.name, c.type, c.nullable) for c in inferred.columns] == [
        ("a", "float", True),
        ("b", "category", True),
    ]
    assert (inferred.columns[0].min, inferred.columns[0].max) == (0.0, 5.0)  # 1..4 ± 0.3, outwards
    assert any(line.startswith("b: 'NA' read as missing") for line in inferred.review)
    assert "a: integers with missing values, typed float (int cannot be null)" in inferred.review


def test_separator_is_sniffed_and_label_may_be_first(tmp_path):
    inferred = _infer(tmp_path, "y;a;b\n1;1.5;u\n0;2.5;v\n1;3.5;u\n", label="y")
    assert inferred.separator == ";"
    assert inferred.file_columns == ["y", "a", "b"]
    assert [c.name for c in inferred.columns] == ["a", "b"]


def test_positive_class_evident_chosen_or_minority(tmp_path):
    assert _infer(tmp_path, "a,y\n1,True\n2,False\n3,False\n").label.positive == "True"
    minority = _infer(tmp_path, "a,y\n1,cat\n2,dog\n3,dog\n")
    assert (minority.label.positive, minority.label.negative) == ("cat", "dog")
    assert "positive class 'cat'" in minority.review[0]
    chosen = _infer(tmp_path, "a,y\n1,cat\n2,dog\n3,dog\n", positive="dog")
    assert (chosen.label.positive, chosen.label.negative) == ("dog", "cat")


def test_review_findings(tmp_path):
    rows = "".join(f"{i},{i % 2},{'0' + str(i % 9)},lvl{i},{i % 2}\n" for i in range(1, 61))
    inferred = _infer(tmp_path, "id,flag,zip,word,y\n" + rows)
    review = "\n".join(inferred.review)
    assert "id: every value distinct, looks like an identifier" in review
    assert "flag: numeric with only 2 distinct value(s) [0, 1]" in review
    assert "zip: numbers with leading zeros (e.g. '00'), read as codes" in review
    assert "word: high-cardinality category (60 levels)" in review
    types = {c.name: c.type for c in inferred.columns}
    assert types == {"id": "int", "flag": "int", "zip": "category", "word": "category"}


def test_unlabelled_rows_refused_unless_dropped(tmp_path):
    text = "a,y\n1,0\n2,NA\n3,1\n4,NA\n"
    with pytest.raises(
        InferenceError,
        match=r"label column 'y' is missing on 2 row\(s\), line\(s\) 3, 5;.*--drop-unlabelled",
    ):
        _infer(tmp_path, text)
    inferred = _infer(tmp_path, text, drop_unlabelled=True)
    assert inferred.unlabelled_lines == ["3", "5"]
    assert "y (label): 2 unlabelled row(s) left out of training" in inferred.review


@pytest.mark.parametrize(
    ("text", "label", "message"),
    [
        ("a,b\n1,2\n", "y", r"no label column 'y'; the columns are \['a', 'b'\]"),
        (
            "a,y\n1,0\n2,0\n",
            "y",
            r"label column 'y' has only the class '0'; a binary label needs two",
        ),
        (
            "a,y\n1,r\n2,g\n3,b\n",
            "y",
            r"label column 'y' has 3 classes \('b' \(1 rows\), 'g' \(1 rows\), 'r' \(1 rows\)\); "
            r"only binary labels are supported",
        ),
        (
            "a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(9)) + "seven,1\n",
            "y",
            r"column 'a' mixes numbers and text: 1 value\(s\) that are not numbers, e\.g\. "
            r"'seven' on line\(s\) 11, among 9 numbers",
        ),
        (
            "a,b,y\n,1,0\nNA,2,1\n",
            "y",
            r"missing values are written in 2 ways: '' \(column 'a', line 2\); 'NA' \(column 'a', "
            r"line 3\)",
        ),
        ("a b,y\n1,0\n2,1\n", "y", r"line 1: column name\(s\) \['a b'\] cannot be API field names"),
        ("target,y\n1,0\n2,1\n", "y", r"column name\(s\) \['target'\] cannot be API field names"),
        ("a,b,y\nNA,1,0\nNA,2,1\n", "y", r"column 'a' has no values \(every row is missing\)"),
    ],
    ids=[
        "no-label",
        "one-class",
        "three-classes",
        "mixed-types",
        "two-markers",
        "bad-name",
        "reserved-name",
        "all-missing",
    ],
)
def test_inference_errors_name_the_column(tmp_path, text, label, message):
    with pytest.raises(InferenceError, match=message):
        _infer(tmp_path, text, label=label)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", r"data\.csv: empty file"),
        (b"  \n\n", r"data\.csv: empty file"),
        (b"a,y\n", r"data\.csv: only a header row \(line 1\), no data rows"),
        (
            b"a,city,y\n1,Oslo,0\n2,S\xe3o Paulo,1\n",
            r"data\.csv line 3, column 'city': not UTF-8 \(byte 0xe3 at position 4\); save the "
            r"file as UTF-8",
        ),
        (
            b"a,b,y\n1,2,0\n3,4\n",
            r"data\.csv line 3: 2 fields separated by ',', the header has 3 \(truncated or extra",
        ),
        (
            b'a,b,y\n1,"x, y",0\n',
            r"line 2: 4 fields separated by ',', the header has 3 \(a separator inside quotes\?\)",
        ),
        (b"a,a,y\n1,2,0\n", r"line 1: duplicated column name\(s\) \['a'\]"),
        (b"onlyone\n1\n", r"line 1: cannot tell the separator"),
    ],
    ids=[
        "empty",
        "blank",
        "header-only",
        "not-utf8",
        "short-line",
        "quoted-separator",
        "duplicate-names",
        "one-column",
    ],
)
def test_unreadable_csv_errors_name_the_line(tmp_path, payload, message):
    with pytest.raises(CsvFormatError, match=message):
        read_csv_table(_write(tmp_path, payload))


def test_line_numbers_skip_blank_lines(tmp_path):
    table = read_csv_table(_write(tmp_path, "a,y\n1,0\n\n2,1\n"))
    assert table.lines == ["2", "4"]


def test_float_ranges_round_outwards_to_four_digits(tmp_path):
    inferred = _infer(tmp_path, "a,b,y\n1.5,-3.3,0\n7.5,2.2,1\n0.5,0.04155,0\n")
    a, b = inferred.columns
    assert (a.min, a.max) == (0.0, 8.2)  # 0.5..7.5 ± 0.7; never negative, so not below 0
    assert (b.min, b.max) == (-3.85, 2.75)  # -3.3..2.2 ± 0.55; float noise is not rounded out
