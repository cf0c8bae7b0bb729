"""``python -m torchferry.cli``: the same as the ``torchferry`` command."""

import sys

from torchferry.cli import main

sys.exit(main())
