"""The examples in docstrings run and print what they say (modules with at least one)."""

import doctest
import importlib

import pytest

MODULES = [
    "splade_es.sparse",
    "splade_es.tokens",
    "splade_es.query",
    "splade_es.exceptions",
    "splade_es.retry",
    "splade_es.engines",
    "splade_es.encoding.pooling",
    "splade_es.encoding.fast_forward",
    "splade_es.encoding.fused_screen",
    "splade_es.encoding.windows",
    "splade_es.encoding.device_batches",
    "splade_es.ingest.inputs",
    "splade_es.ingest.bulk",
    "splade_es.ingest.checkpoint",
    "splade_es.serve.writes",
    "splade_es.serve.rewrite",
    "splade_es.serve.enrich_plan",
    "splade_es.serve.facts",
    "splade_es.serve.embed",
    "splade_es.api_keys",
    "splade_es.register.plan",
    "splade_es.doctor",
    "splade_es.fusion",
    "splade_es.search",
    "splade_es.encoding.window_tokens",
    "splade_es.ingest.vector_json",
    "splade_es.workbench.ui",
    "splade_es.workbench.judgments",
    "splade_es.workbench.configurations",
    "splade_es.workbench.compare",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
