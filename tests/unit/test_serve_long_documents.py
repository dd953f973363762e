"""serve --long-documents: documents (enrich, /_splade/embed/document) follow it, queries stay
truncated, and passages are refused before anything loads (issue 24)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from splade_es.cli import main
from splade_es.connect import ConnectionConfig
from splade_es.encoding.windows import WindowPolicy
from splade_es.exceptions import ConfigurationError
from splade_es.serve.service import ServeConfig, Service

LONG = " ".join(["the search engine indexes a sparse vector for each document"] * 20)


def config(model, policy):
    return ServeConfig(
        connection=ConnectionConfig(hosts=("http://127.0.0.1:9",)),
        model=str(model),
        device="cpu",
        long_documents=policy,
    )


def test_a_siamese_model_encodes_documents_by_the_policy_and_queries_truncated(tiny_bert_dir):
    service = Service(config(tiny_bert_dir, WindowPolicy("maxpool", window=16, overlap=4)))
    encoder = service._load_query_encoder()
    documents = encoder.encode_documents([LONG])
    assert documents.windows.tolist()[0] > 1
    expected = encoder.encode_documents([LONG], long_documents="maxpool", window=16, overlap=4)
    assert documents.to_dicts() == expected.to_dicts()
    assert encoder.encode_queries([LONG]).truncated.tolist() == [True]


def test_passages_are_refused_by_the_config():
    with pytest.raises(ConfigurationError, match="one vector per text"):
        config("unused", WindowPolicy("passages"))


def test_the_cli_refuses_passages_in_one_line(tiny_bert_dir):
    result = CliRunner().invoke(
        main,
        [
            *("serve", "--url", "http://127.0.0.1:9", "--model", str(tiny_bert_dir)),
            *("--long-documents", "passages"),
        ],
    )
    assert result.exit_code == 2
    assert "one vector per text" in result.output
    assert "Traceback" not in result.output
