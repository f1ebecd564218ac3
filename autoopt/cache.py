"""Where autoopt keeps things that are expensive to rebuild (pipeline weights, ...): outside the repo.

Everything under it is safe to delete. `AUTOOPT_CACHE_DIR` overrides the location, otherwise
`$XDG_CACHE_HOME/autoopt` or `~/.cache/autoopt`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> str:
    """The cache sub-directory `kind` (created on demand)."""
    root = os.environ.get("AUTOOPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "autoopt"
    )
    path = os.path.join(root, kind)
    os.makedirs(path, exist_ok=True)
    return path
