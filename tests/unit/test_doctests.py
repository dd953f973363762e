import doctest

import pytest

import splade_es.fast_forward
import splade_es.fused_screen
import splade_es.pooling
import splade_es.sparse


@pytest.mark.parametrize(
    "module",
    [splade_es.sparse, splade_es.pooling, splade_es.fast_forward, splade_es.fused_screen],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
