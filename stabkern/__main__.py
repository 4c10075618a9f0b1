"""`python -m stabkern`: the `stabkern` command line (stabkern/cli/main.py)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
