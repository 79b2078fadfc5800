"""``python -m embedjax ...``: the same command line as the ``embedjax`` script."""

from __future__ import annotations

import sys

from embedjax.cli import main

if __name__ == '__main__':
  sys.exit(main())
