"""Every error a caller can cause is a ``SpladeEsError`` (exceptions.py's promise), and the
ones that replaced a bare ``ValueError`` / ``RuntimeError`` still are one."""

from __future__ import annotations

import asyncio

import pytest
import torch

from splade_es.encoding.encoder import SpladeEncoder, parse_device, parse_dtype
from splade_es.encoding.pooling import SpladeHead
from splade_es.evaluate import run_queries
from splade_es.exceptions import (
    ClusterTimeoutError,
    ConfigurationError,
    ConnectionFailedError,
    InputError,
    OverloadedError,
    ShuttingDownError,
    SpladeEsError,
)
from splade_es.sparse import SparseBatch
from splade_es.tokens import TokenCodec

VOCAB = ["[PAD]", "tax", "code", "garlic"]


def one_row() -> SparseBatch:
    return SparseBatch.from_rows([([1, 2], [2.0, 0.5])], vocab=VOCAB)


@pytest.mark.parametrize(
    ("call", "option", "value"),
    [
        (lambda: parse_device("xyz"), "device", "xyz"),
        (lambda: parse_device("meta"), "device", "meta"),
        (lambda: parse_device("cuda:99"), "device", "cuda:99"),
        (lambda: parse_dtype("float8", torch.device("cpu")), "dtype", "float8"),
        (lambda: one_row().prune(top_k=0), "top_k", 0),
        (lambda: TokenCodec(VOCAB, scheme="hash"), "scheme", "hash"),  # type: ignore[arg-type]
        (lambda: SpladeHead(torch.zeros(4, 2), None, pooling="mean"), "pooling", "mean"),  # type: ignore[arg-type]
        (lambda: SpladeHead(torch.zeros(4, 2), None, activation="gelu"), "activation", "gelu"),  # type: ignore[arg-type]
        (lambda: run_queries(None, "i", {}, mode="dense"), "mode", "dense"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_value_is_a_configuration_error_naming_its_option(call, option, value):
    with pytest.raises(ConfigurationError) as caught:
        call()
    assert isinstance(caught.value, ValueError)  # callers catching ValueError keep working
    assert (caught.value.option, caught.value.value) == (option, value)
    assert str(caught.value).startswith(f"{option} must ")
    assert repr(value) in str(caught.value)


def test_a_device_this_machine_lacks_is_refused_before_the_model_is_read(tmp_path):
    # No checkpoint at that path: the option is checked first, so its error is the one seen.
    with pytest.raises(ConfigurationError, match="cuda:99"):
        SpladeEncoder.from_pretrained(str(tmp_path / "nothing"), device="cuda:99")


def test_max_length_beyond_the_model_names_the_model_limit(tiny_bert_dir):
    with pytest.raises(ConfigurationError) as caught:
        SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu", max_length=99_999)
    assert caught.value.option == "max_length" and caught.value.value == 99_999
    assert "2 to 64" in str(caught.value)


def test_encoder_batch_size_and_other_misuse(tiny_bert_dir):
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    with pytest.raises(ConfigurationError, match="batch_size must be >= 1, got 0"):
        list(encoder.iter_encode(["tax"], batch_size=0))
    with pytest.raises(ConfigurationError):
        SparseBatch.concat([])
    codec = TokenCodec(VOCAB)
    with pytest.raises(ConfigurationError, match="vocabulary"):
        codec.encode(encoder.encode_documents(["tax"]), 0)
    with pytest.raises(ConfigurationError, match="duplicate"):
        TokenCodec(["a", "a"])
    with pytest.raises(ConfigurationError, match="needs an encoder"):
        run_queries(None, "i", {}, mode="splade")


def test_serve_batchers_refuse_bad_sizes_and_stopped_work():
    from splade_es.serve.batcher import DocumentBatcher, MicroBatcher, QueueFull

    with pytest.raises(ConfigurationError, match="max_batch must be >= 1, got 0"):
        MicroBatcher(lambda texts: one_row(), max_batch=0)
    with pytest.raises(ConfigurationError, match="max_wait must be >= 0"):
        MicroBatcher(lambda texts: one_row(), max_wait=-1)
    with pytest.raises(ConfigurationError, match="max_queued must be >= 1, got 0"):
        DocumentBatcher(lambda texts: one_row(), None, max_queued=0)
    assert issubclass(QueueFull, OverloadedError)

    async def after_close() -> None:
        batcher = MicroBatcher(lambda texts: one_row())
        batcher.start()
        await batcher.close()
        with pytest.raises(ShuttingDownError):
            await batcher.encode(["tax"])

    asyncio.run(after_close())
    assert issubclass(ShuttingDownError, RuntimeError)


def test_serve_exceptions_are_in_the_tree():
    from splade_es.serve.rewrite import RewriteError
    from splade_es.serve.service import HttpError
    from splade_es.serve.upstream import UpstreamTimeout, UpstreamUnavailable

    assert issubclass(HttpError, InputError)
    assert issubclass(RewriteError, InputError)
    assert issubclass(UpstreamUnavailable, ConnectionFailedError)
    assert issubclass(UpstreamTimeout, ClusterTimeoutError)


def test_upstream_timeouts_and_refusals_are_cluster_errors():
    from aiohttp import web

    from splade_es.connect import ConnectionConfig
    from splade_es.serve.upstream import Upstream, UpstreamTimeout, UpstreamUnavailable

    async def scenario() -> None:
        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(5)
            return web.Response(text="late")

        app = web.Application()
        app.router.add_get("/", slow)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            upstream = Upstream(ConnectionConfig(hosts=(f"http://127.0.0.1:{port}",)), timeout=0.2)
            with pytest.raises(ShuttingDownError):  # before start(): no connection yet
                await upstream.request("GET", "/", [])
            await upstream.start()
            with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.2 s"):
                await upstream.request("GET", "/", [])
            await upstream.close()
        finally:
            await runner.cleanup()
        refused = Upstream(ConnectionConfig(hosts=("http://127.0.0.1:9",)))
        await refused.start()
        try:
            with pytest.raises(UpstreamUnavailable) as caught:
                await refused.request("GET", "/", [])
            assert not isinstance(caught.value, ClusterTimeoutError)
        finally:
            await refused.close()

    asyncio.run(scenario())


def test_every_class_of_the_tree_is_a_splade_es_error():
    import splade_es.exceptions as tree

    classes = [v for v in vars(tree).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert len(classes) >= 14
    assert all(issubclass(c, SpladeEsError) for c in classes)
    assert all(c.__doc__ for c in classes)


# ---------------------------------------------------------------------- connection settings
@pytest.mark.parametrize(
    ("kwargs", "option", "shown"),
    [
        ({"hosts": ("ftp://u:hunter2@a",)}, "hosts", "'ftp://***@a'"),
        ({"hosts": ("http://:9200",)}, "hosts", "'http://:9200'"),
        ({"hosts": ("http://a:port",)}, "hosts", "'http://a:port'"),
        ({"cloud_id": "not-a-cloud-id"}, "cloud_id", "'not-a-cloud-id'"),
    ],
)
def test_bad_connection_settings_name_the_setting(kwargs, option, shown):
    from splade_es.connect import ConnectionConfig

    with pytest.raises(ConfigurationError) as caught:
        ConnectionConfig(**kwargs)
    assert caught.value.option == option
    assert shown in str(caught.value) and "hunter2" not in str(caught.value)


def test_client_errors_are_mapped_in_call():
    import elastic_transport
    import elasticsearch
    import opensearchpy

    from splade_es.connect import call
    from splade_es.exceptions import ClusterError

    def raising(exc: Exception):
        def func():
            raise exc

        return func

    for timeout in (
        elasticsearch.ConnectionTimeout("timed out"),
        opensearchpy.ConnectionTimeout("TIMEOUT", "timed out", Exception()),
    ):
        with pytest.raises(ClusterTimeoutError, match="reading x: no answer in time"):
            call(raising(timeout), "reading x")
    with pytest.raises(ConnectionFailedError) as refused:
        call(raising(elasticsearch.ConnectionError("refused")), "reading x")
    assert not isinstance(refused.value, ClusterTimeoutError)
    # The transport's other errors (not ApiError) were not mapped before.
    with pytest.raises(ClusterError, match="SerializationError"):
        call(raising(elastic_transport.SerializationError("bad body")), "reading x")
