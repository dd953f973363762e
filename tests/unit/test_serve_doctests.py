import doctest

import pytest

import splade_es.serve.facts
import splade_es.serve.rewrite


@pytest.mark.parametrize("module", [splade_es.serve.rewrite, splade_es.serve.facts])
def test_serve_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
