"""``python -m structformer``: the ``structformer`` command, for environments without its script."""

import sys

from structformer.cli import main

sys.exit(main())
