"""``splade-es serve`` answers each branch of the error tree with its own HTTP status, from one
table (``serve.errors.HTTP_ERRORS``): the request's fault 400, the proxy's capacity 429/503, the
cluster's failure 502/504, the proxy's own 500 (without details)."""

from __future__ import annotations

import socket

import pytest

import splade_es.exceptions as tree
from splade_es.connect import ConnectionConfig
from splade_es.encoding.encoder import SpladeEncoder
from splade_es.exceptions import (
    AuthenticationError,
    ClusterError,
    ClusterTimeoutError,
    ConfigurationError,
    ConnectionFailedError,
    EmptyQueryError,
    InputError,
    ModelLoadError,
    ShuttingDownError,
    SpladeEsError,
    UnsupportedFeatureError,
)
from splade_es.serve.batcher import QueueFull
from splade_es.serve.enrich import TooManyRequests
from splade_es.serve.errors import HTTP_ERRORS, INTERNAL_REASON, http_error
from splade_es.serve.rewrite import RewriteError
from splade_es.serve.service import HttpError
from splade_es.serve.upstream import UpstreamTimeout, UpstreamUnavailable
from splade_es.serve.writes import WriteBodyError
from tests.integration.serve_support import post_json, running_proxy

BAD_VALUE = "illegal_argument_exception"


@pytest.mark.parametrize(
    ("error", "status", "error_type"),
    [
        (InputError("bad text"), 400, "illegal_argument_exception"),
        (EmptyQueryError("no tokens"), 400, "illegal_argument_exception"),
        (ConfigurationError("unknown engine"), 400, "illegal_argument_exception"),
        (UnsupportedFeatureError("no rrf on 2.10"), 400, "illegal_argument_exception"),
        (RewriteError("bad clause"), 400, "parsing_exception"),
        (RewriteError("top_k", error_type=BAD_VALUE), 400, BAD_VALUE),
        (HttpError(413, "content_too_long_exception", "big"), 413, "content_too_long_exception"),
        (HttpError(415, "media_type_header_exception", "?"), 415, "media_type_header_exception"),
        (WriteBodyError("bulk item 1: not JSON"), 400, "illegal_argument_exception"),
        (QueueFull("4096 documents waiting"), 429, "es_rejected_execution_exception"),
        (TooManyRequests("4096 documents waiting"), 429, "es_rejected_execution_exception"),
        (ShuttingDownError("stopping"), 503, "unavailable_exception"),
        (UpstreamUnavailable("refused"), 502, "upstream_unavailable_exception"),
        (ConnectionFailedError("refused"), 502, "upstream_unavailable_exception"),
        (UpstreamTimeout("no answer"), 504, "timeout_exception"),
        (ClusterTimeoutError("no answer"), 504, "timeout_exception"),
        (AuthenticationError("401"), 502, "security_exception"),
        (ClusterError("shard failure"), 502, "upstream_exception"),
    ],
)  # fmt: skip
def test_each_error_gets_its_status_and_says_why(error, status, error_type):
    assert http_error(error) == (status, error_type, str(error))


@pytest.mark.parametrize(
    "error",
    [ModelLoadError("/srv/models/x: unreadable"), SpladeEsError("?"), RuntimeError("a bug")],
)
def test_the_proxys_own_failures_are_500_without_details(error):
    status, _, reason = http_error(error)
    assert (status, reason) == (500, INTERNAL_REASON)


def test_every_class_of_the_tree_has_an_answer_of_its_branch():
    """Each class meets a table entry of the tree before the catch-all ``Exception``."""
    for cls in vars(tree).values():
        if isinstance(cls, type) and issubclass(cls, SpladeEsError):
            first = next(c for c in cls.__mro__ if c in HTTP_ERRORS)
            assert first is not Exception, cls
    assert HTTP_ERRORS[ClusterError][0] >= 500  # never a 400, as the old chain answered


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir) -> SpladeEncoder:
    return SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")


def test_a_cluster_that_answers_too_late_is_504_and_one_that_refuses_502(encoder):
    # A socket that listens and never answers: the connection opens, no response comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        late = ConnectionConfig(hosts=(url,), request_timeout=0.2)
        with running_proxy(url, encoder, connection=late) as app:
            status, answer = post_json(app, "/_splade/query", {"text": "tax", "index": "docs"})
        assert status == 504 and answer["error"]["type"] == "timeout_exception"
    with running_proxy("http://127.0.0.1:9", encoder) as app:
        status, answer = post_json(app, "/_splade/query", {"text": "tax", "index": "docs"})
        reason = answer["error"]["reason"]
        assert status == 502 and "cannot be reached" in reason
        assert "127.0.0.1" not in reason  # the cluster's address is not the app's business
        # The request's own mistakes stay 400 (an engine no dialect knows: ConfigurationError).
        status, answer = post_json(
            app, "/_splade/query", {"text": "tax", "engine": "solr", "version": "9.0.0"}
        )
        assert status == 400 and "unknown engine" in answer["error"]["reason"]
        status, answer = post_json(app, "/_splade/encode", {"texts": ["tax"], "key_scheme": "hash"})
        assert status == 400 and "'hash'" in answer["error"]["reason"]
