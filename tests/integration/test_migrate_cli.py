"""``splade-es migrate`` as a user runs it: a missing source index is named as such."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner

from splade_es.cli import main
from tests.integration.test_doctor import credentials

pytestmark = pytest.mark.integration


def test_a_missing_source_is_named_before_anything_counts_it(cluster, tiny_bert_dir):
    source = f"splade-es-test-missing-{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(
        main,
        [
            "migrate",
            "--url",
            cluster.url,
            "--source",
            source,
            "--target",
            f"{source}-splade",
            "--alias",
            f"{source}-alias",
            "--model",
            str(tiny_bert_dir),
        ],
        env=credentials(),
    )
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.stderr
    assert lines == [f"error: source index {source!r} does not exist"]
    assert not cluster.client.indices.exists(index=f"{source}-splade")
