"""``python -m dkuxnet`` is the same as the ``dkuxnet`` console script."""

import sys

from dkuxnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
