"""``python -m prm.cli``: the same as the ``prm`` command (used with ``torchrun -m``)."""

import sys

from prm.cli import main

sys.exit(main())
