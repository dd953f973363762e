import doctest

import pytest

import splade_es.encoding.fast_forward
import splade_es.encoding.fused_screen
import splade_es.encoding.pooling
import splade_es.retry
import splade_es.sparse


@pytest.mark.parametrize(
    "module",
    [
        splade_es.sparse,
        splade_es.encoding.pooling,
        splade_es.encoding.fast_forward,
        splade_es.encoding.fused_screen,
        splade_es.retry,
    ],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
