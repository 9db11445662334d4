"""``python -m services.cli``: the ``esper`` command run from a checkout."""

import sys

from services.cli.main import main

sys.exit(main())
