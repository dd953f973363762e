"""The ``splade-es`` command: a thin shell over the library API.

Each command parses options, calls one library function and prints the result. Errors from
the library (``SpladeEsError``) become a one-line message and exit status 2; Ctrl-C exits
130 (see ``app.EXIT_STATUS_HELP``).

    app.py        the command group, connection options, error handling, progress display
    encode.py     encode
    indexing.py   create-index, ingest
    searching.py  search, explain, evaluate
    compare.py    compare (configurations side by side; --ui: the workbench page)
    serve.py      serve (query translation proxy)
    migration.py  migrate
    doctor.py     doctor
    register.py   register (serve as the cluster's inference service)
"""

from . import (  # noqa: F401  (registers the commands)
    compare,
    doctor,
    encode,
    indexing,
    migration,
    register,
    searching,
    serve,
)
from .app import main

__all__ = ["main"]
