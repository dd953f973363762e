"""Old module names that keep working after the package was grouped into ``encoding/`` and
``migrate/`` (deprecated: import the new names).

An old name resolves to the very module object of the new one (not a copy), so monkeypatching
or ``isinstance`` checks through either name see the same thing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    "splade_es.encoder": "splade_es.encoding.encoder",
    "splade_es.fast_forward": "splade_es.encoding.fast_forward",
    "splade_es.fused_screen": "splade_es.encoding.fused_screen",
    "splade_es.pooling": "splade_es.encoding.pooling",
    "splade_es.static_query": "splade_es.encoding.static_query",
    "splade_es.model_files": "splade_es.encoding.model_files",
    "splade_es.migrate_sync": "splade_es.migrate.sync",
    "splade_es.migrate_verify": "splade_es.migrate.verify",
    "splade_es.report": "splade_es.migrate.report",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name and hands back the module now living under the new one."""

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new_name = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new_name}; the old name will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new_name)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was executed under its new name."""


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
