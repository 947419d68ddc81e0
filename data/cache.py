"""Array caches of the image data sets: one ``.npz`` per data set, tied to its source by a fingerprint.

A cache file holds the arrays plus ``fingerprint`` (of the source files) and ``version`` (of the cache
format). ``read`` returns the arrays only when both match, and treats a truncated or foreign file as
absent (it is rebuilt); ``write`` replaces the file atomically, so a concurrent reader never sees half
of one.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np

log = logging.getLogger(__name__)


def read(path: Path, fingerprint: str, version: int, what: str) -> Optional[Dict[str, np.ndarray]]:
    """The arrays stored in ``path`` if it is a valid cache of this ``fingerprint`` and ``version``."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cache:
            if int(cache["version"]) != version or str(cache["fingerprint"]) != fingerprint:
                return None
            return {k: cache[k] for k in cache.files if k not in ("version", "fingerprint")}
    except Exception as err:  # a truncated or foreign file: rebuild it
        log.warning("ignoring unreadable %s cache %s (%s)", what, path, err)
        return None


def write(path: Path, arrays: Dict[str, np.ndarray], fingerprint: str, version: int, what: str) -> bool:
    """Write ``arrays`` to ``path`` (atomically); False, with a warning, if it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}_", suffix=".npz.part")
    except OSError as err:
        log.warning("could not write %s cache in %s (%s)", what, path.parent, err)
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, fingerprint=np.array(fingerprint), version=np.array(version))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return True
    except OSError as err:
        log.warning("could not write %s cache %s (%s)", what, path, err)
        return False
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
