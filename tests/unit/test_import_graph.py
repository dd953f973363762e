"""What importing splade_es costs, and the shape of its import graph.

A front end that only builds queries must not pay for torch, and no two modules may import each
other at module level (a cycle makes the import order decide which names exist yet).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "splade_es"

BUILD_QUERY = """
from splade_es.query import QueryBuilder
from splade_es.sparse import SparseBatch
builder = QueryBuilder.for_engine("elasticsearch", version="8.15.0")
batch = SparseBatch.from_rows([([1, 2], [1.5, 0.5])], vocab=["[PAD]", "tax", "code"])
assert builder.sparse_query(batch)
assert builder.sparse_query({"tax": 1.5})
"""


def run_python(code: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr


def test_building_a_query_does_not_import_torch() -> None:
    run_python(
        "import sys\nimport splade_es.query\n"
        + BUILD_QUERY
        + "assert 'torch' not in sys.modules, 'torch imported'\n"
    )


def test_package_import_is_lazy_about_the_encoder_only() -> None:
    run_python(
        "import sys\nimport splade_es\n"
        "assert 'torch' not in sys.modules, 'import splade_es imported torch'\n"
        "splade_es.QueryBuilder, splade_es.SparseBatch, splade_es.connect\n"
        + BUILD_QUERY
        + "assert 'torch' not in sys.modules, 'torch imported'\n"
        "from splade_es import SpladeEncoder\n"
        "from splade_es.encoding.encoder import SpladeEncoder as Direct\n"
        "assert SpladeEncoder is Direct and splade_es.SpladeEncoder is Direct\n"
        "assert 'torch' in sys.modules\n"
    )


def test_every_public_name_resolves() -> None:
    run_python(
        "import types, splade_es\n"
        "for name in splade_es.__all__:\n"
        "    value = getattr(splade_es, name)\n"
        # connect, ingest, search ...: the functions, not the submodules of the same name
        "    assert not isinstance(value, types.ModuleType), name\n"
        "assert set(splade_es.__all__) <= set(dir(splade_es))\n"
    )


def test_unknown_attribute_is_an_attribute_error() -> None:
    import splade_es

    with pytest.raises(AttributeError, match="no_such_name"):
        splade_es.no_such_name  # noqa: B018


def test_static_query_encoder_does_not_import_torch() -> None:
    # The query side of an inference-free model: the tokenizer and a weight table, no torch.
    run_python(
        "import sys\nimport splade_es.encoding.static_query, splade_es.encoding.model_files\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )


# ---------------------------------------------------------------------- the import graph
def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: not those in functions or under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _type_checking(node.test):
                found += module_level_imports(node.body) + module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += module_level_imports(block)
        elif isinstance(node, ast.With):
            found += module_level_imports(node.body)
    return found


def import_graph() -> dict[str, set[str]]:
    names = module_names()
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph[name] = set()
        for node in module_level_imports(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in names}
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            submodules = {f"{base}.{a.name}" for a in node.names} & names.keys()
            edges |= submodules
            # "from pkg import submodule" needs only the submodule; any other name needs the
            # module that defines it to have run.
            if base in names and len(submodules) < len(node.names):
                edges.add(base)
        edges.discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_walker_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("import x\nif TYPE_CHECKING:\n    import y\ndef f():\n    import z\n")
    assert [n.names[0].name for n in module_level_imports(tree.body)] == ["x"]


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert "splade_es.engines" in graph["splade_es.query"]
    assert cycles(graph) == []


def test_static_query_and_model_files_import_one_way() -> None:
    # The query table's file description lives with the rest of a checkpoint's layout, so
    # static_query reads model_files at module level and model_files never reads static_query
    # (not even from inside a function, which would only hide the cycle).
    for node in ast.walk(ast.parse((PACKAGE / "encoding" / "model_files.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.module != "static_query", "model_files imports static_query"


def test_moved_modules_keep_their_old_names() -> None:
    """Grouping the root into encoding/ and migrate/ must not break code importing the old
    names: each resolves, with a DeprecationWarning, to the very module of the new name."""
    run_python(
        "import importlib, warnings\n"
        "from splade_es._moved import MOVED\n"
        "for old, new in MOVED.items():\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        module = importlib.import_module(old)\n"
        "    assert module is importlib.import_module(new), old\n"
        "    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message)\n"
        "               for w in caught), (old, [str(w.message) for w in caught])\n"
        "from splade_es.migrate import migrate, Gate, MigrationConfig, target_body, verify\n"
        "from splade_es.encoding import Encoder, DocumentEncoder\n"
        "from splade_es.report import write_chart\n"
        "import splade_es.migrate.report as report\n"
        "assert write_chart is report.write_chart\n"
    )
