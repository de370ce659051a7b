"""``python -m fedsim``: the ``fedsim`` command (see :mod:`fedsim.cli`)."""

import sys

from fedsim.cli import main

if __name__ == "__main__":
    sys.exit(main())
