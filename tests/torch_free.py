"""``python -m tests.torch_free ARGS``: run ``esper ARGS`` and say on stderr's last line whether torch was imported.

The start-up tests run commands that neither train nor decide through this and assert the last line; a command
that does train (``esper policy show``) is the control that the line can say "yes".
"""

from __future__ import annotations

import atexit
import sys

from services.cli.main import main

MARKER = "esper-test: torch imported:"


@atexit.register
def _report() -> None:
    print(f"{MARKER} {'yes' if 'torch' in sys.modules else 'no'}", file=sys.stderr, flush=True)


sys.exit(main(sys.argv[1:]))
