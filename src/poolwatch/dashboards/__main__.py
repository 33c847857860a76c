"""``python -m poolwatch.dashboards``: the same as ``poolwatch dashboards``."""

from __future__ import annotations

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["dashboards", *sys.argv[1:]]))
