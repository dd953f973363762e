"""The package's shape, checked: short functions, and defaults written in one place.

The orchestrators (ingest, migrate, create_app) compose named stages; a function that grows
past ~80 lines is a sign a stage is hiding in it. Defaults live in ``splade_es.defaults``:
a default written as a literal somewhere else is one that will drift from the others.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import splade_es.defaults as defaults

PACKAGE = Path(__file__).resolve().parents[2] / "splade_es"
MAX_FUNCTION_LINES = 80
# Declarative tables, not logic: one statement per metric.
TABLES = {("serve/metrics.py", "__init__")}


def functions() -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PACKAGE).as_posix(), node


def test_no_function_is_longer_than_the_limit() -> None:
    long = [
        f"{where}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for where, node in functions()
        if node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
        and (where, node.name) not in TABLES
    ]
    assert long == [], "split these into named steps:\n" + "\n".join(long)


def literal_defaults(node: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[tuple[str, object]]:
    """(parameter name, literal default) of a function's parameters."""
    positional = node.args.posonlyargs + node.args.args
    pairs = list(
        zip(
            positional[len(positional) - len(node.args.defaults) :], node.args.defaults, strict=True
        )
    )
    pairs += [
        (a, d)
        for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True)
        if d is not None
    ]
    for arg, default in pairs:
        try:
            yield arg.arg, ast.literal_eval(default)
        except ValueError:
            continue


def test_parameter_defaults_come_from_the_defaults_module() -> None:
    # The parameter names that mean the same thing everywhere, and the default each must take.
    owned = {
        "text_fields": defaults.TEXT_FIELDS,
        "fields": defaults.TEXT_FIELDS,
        "batch_size": defaults.BATCH_SIZE,
        "sparse_field": defaults.VECTOR_FIELD,
        "vector_field": defaults.VECTOR_FIELD,
        "bulk_docs": defaults.BULK_DOCS,
        "page_size": defaults.PAGE_SIZE,
        "keep_alive": defaults.KEEP_ALIVE,
    }
    written = [
        f"{where}:{node.lineno} {node.name}({name}={value!r})"
        for where, node in functions()
        for name, value in literal_defaults(node)
        if name in owned and value == owned[name]
    ]
    assert written == [], "read these from splade_es.defaults:\n" + "\n".join(written)


def test_the_default_text_fields_are_written_once() -> None:
    spelled = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "defaults.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List)):
                try:
                    value = tuple(ast.literal_eval(node))
                except ValueError:
                    continue
                if value == defaults.TEXT_FIELDS:
                    spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert spelled == [], "use defaults.TEXT_FIELDS:\n" + "\n".join(spelled)
