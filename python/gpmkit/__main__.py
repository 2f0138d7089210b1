"""``python -m gpmkit``: the ``gpmkit`` command line (see :mod:`gpmkit.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
