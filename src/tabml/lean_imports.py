"""Keep LightGBM from loading optional integrations a process never uses.

LightGBM imports pandas and scikit-learn whenever they are installed (about 2 s of start-up on
this project's machines), even for a process that only trains on numpy arrays or serves
predictions. Hiding them before LightGBM loads makes its own import fall back as if they were
absent; it is only safe in a process that never uses the hidden libraries itself.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


def hide_optional_libraries(*names: str) -> None:
    """Make `import <name>` raise ImportError in this process; call before importing LightGBM."""
    if "lightgbm" in sys.modules:
        return
    for name in names:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]


@contextmanager
def optional_libraries_hidden(*names: str) -> Iterator[None]:
    """Hide `names` only while importing LightGBM inside the block; afterwards they import again.

    LightGBM decides at import time which integrations exist, so a later `import sklearn` (for
    metrics, say) still works and LightGBM stays on its lean path.
    """
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
