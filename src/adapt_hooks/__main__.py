"""``python -m adapt_hooks``: the same as the ``adapt-hooks`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
