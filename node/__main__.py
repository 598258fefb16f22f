"""``python -m node`` runs the ``tally`` command."""

import sys

from node.cli import main

sys.exit(main())
