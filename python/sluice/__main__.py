"""``python -m sluice ...`` runs the ``sluice`` binary."""

import os
import sys

from ._binary import find_sluice_bin


def main() -> None:
    binary = find_sluice_bin()
    os.execv(binary, [binary, *sys.argv[1:]])


if __name__ == "__main__":
    main()
