"""Progress bars that stay readable in CI logs: redraw every 10 s when stderr is not a terminal."""
from __future__ import annotations

import sys
from typing import Any, Iterable

from tqdm import tqdm


def progress(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 10.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
