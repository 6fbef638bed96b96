"""``python -m phantom_token`` runs the ``phantom-token`` command."""

import sys

from phantom_token.cli import main

sys.exit(main())
