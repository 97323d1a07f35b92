"""Verify a bundle before it is trusted, and optionally copy it: how an image bakes one.

    python -m tabml.bundle_check BUNDLE [--model-md5 MD5] [--copy-to DEST]

Every file is checked along the bundle's md5 chain (`tabml.bundle.load_bundle`: bundle.json →
provenance.json → each file, the model's md5 also against its commit's dvc.lock as recorded).
`--model-md5` must be the champion's model md5 (the image labels carry it, so they cannot lie).
With `--copy-to`, the verified generation is copied to DEST and the copy verified again, so what
the image receives is exactly what was checked.

Exit status 0 when everything holds; 1 with the problem (the file and both md5s) and how to fix
it; 2 for usage errors. Needs only the serving dependencies (it runs in the image's build stage).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from tabml.bundle import CHAMPION, MANIFEST_FILE, Bundle, BundleError, load_bundle

FIX = (
    "Write the bundle again (`tabml-registry export --alias champion [--alias challenger] "
    "--out DIR`), then build again."
)


def check(path: Path, model_md5: str | None) -> Bundle:
    """The verified bundle at `path`; `BundleError` if anything is off."""
    if not (path / MANIFEST_FILE).is_file():
        raise BundleError(f"{path} is not a bundle: it has no {MANIFEST_FILE}")
    bundle = load_bundle(path)
    champion = bundle.version(CHAMPION).provenance
    if model_md5 and champion.model_md5 != model_md5:
        raise BundleError(
            f"{path}: the champion {champion.version_id}'s model md5 is {champion.model_md5}, "
            f"not {model_md5} (the md5 given for the image's labels)"
        )
    return bundle


def describe(bundle: Bundle) -> str:
    roles = ", ".join(f"{role} {version}" for role, version in bundle.roles.items())
    route = f", route {bundle.route}" if bundle.route else ""
    md5 = bundle.version(CHAMPION).provenance.model_md5
    return f"{roles}{route} (champion model md5 {md5}): every file verified"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tabml.bundle_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--model-md5", help="the champion's model md5 must be this")
    parser.add_argument("--copy-to", type=Path, help="then copy the verified bundle here")
    args = parser.parse_args(argv)
    try:
        bundle = check(args.bundle, args.model_md5)
        if args.copy_to is not None:
            shutil.copytree(bundle.path, args.copy_to)
            bundle = check(args.copy_to, args.model_md5)
    except (BundleError, OSError) as exc:
        print(f"error: {exc}\n{FIX}", file=sys.stderr)
        return 1
    print(f"bundle {args.copy_to or args.bundle}: {describe(bundle)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
