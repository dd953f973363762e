import doctest

import pytest

import splade_es.serve.enrich
import splade_es.serve.facts
import splade_es.serve.rewrite
import splade_es.serve.writes


@pytest.mark.parametrize(
    "module",
    [
        splade_es.serve.rewrite,
        splade_es.serve.facts,
        splade_es.serve.writes,
        splade_es.serve.enrich,
    ],
)
def test_serve_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
