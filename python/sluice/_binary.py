"""Finding the ``sluice`` binary the wheel installed."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path


def find_sluice_bin() -> str:
    """The path of the ``sluice`` executable.

    ``$SLUICE_BIN`` wins; then the scripts directory of this Python
    environment (where the wheel put it), the user scheme's, and ``PATH``.
    """
    explicit = os.environ.get("SLUICE_BIN")
    if explicit:
        return explicit
    name = "sluice" + (sysconfig.get_config_var("EXE") or "")
    candidates = [Path(sysconfig.get_path("scripts")) / name]
    try:
        user = sysconfig.get_path("scripts", f"{os.name}_user")
        candidates.append(Path(user) / name)
    except KeyError:
        pass
    candidates.append(Path(sys.executable).parent / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        "the sluice binary was not found: reinstall the package (pip install sluice) or set SLUICE_BIN"
    )
