"""The command line and process supervision: the application edge above every component.

``esper`` (``main``) parses arguments and dispatches to the components; ``esper up`` starts the cluster and the
supervisor, which runs each service as a process. This is the one package that reads the environment
(``settings``) and the one place errors are turned into a one-line message and an exit code.
"""

from services.cli.main import main

__all__ = ["main"]
