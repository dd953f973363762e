"""The one retry policy (splade_es.retry): bounded, exponential, jittered, retrying only what
is retryable. Bulk sending, migration and enrichment all wait by it."""

from __future__ import annotations

import elasticsearch
import opensearchpy
import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from tenacity import RetryError, retry_if_exception

from splade_es.retry import RETRYABLE_STATUS, RetryPolicy, is_retryable, status_of


def es_api_error(status: int) -> elasticsearch.ApiError:
    meta = ApiResponseMeta(
        status=status,
        http_version="1.1",
        headers=HttpHeaders(),
        duration=0.0,
        node=NodeConfig("http", "localhost", 9200),
    )
    return elasticsearch.ApiError(f"status {status}", meta=meta, body={})


def test_backoff_doubles_from_the_initial_wait_up_to_the_cap() -> None:
    policy = RetryPolicy(max_retries=5, initial_backoff=0.25, max_backoff=1.5, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.25, 0.5, 1.0, 1.5, 1.5]


def test_jitter_spreads_waits_within_its_bound() -> None:
    policy = RetryPolicy(initial_backoff=0.0, max_backoff=10.0, jitter=0.5)
    waits = [policy.backoff(1) for _ in range(200)]
    assert all(0.0 <= wait <= 0.5 for wait in waits)
    assert len(set(waits)) > 100, "no jitter: concurrent clients would retry in step"


def test_retrying_stops_after_max_retries_and_sleeps_by_the_policy() -> None:
    policy = RetryPolicy(max_retries=3, initial_backoff=1.0, max_backoff=3.0, jitter=0.0)
    slept: list[float] = []
    calls = 0
    with pytest.raises(RetryError):
        for attempt in policy.retrying(retry=retry_if_exception(is_retryable), sleep=slept.append):
            with attempt:
                calls += 1
                raise opensearchpy.ConnectionError("N/A", "refused", None)
    assert calls == 4  # the first try and three re-sends
    assert slept == [1.0, 2.0, 3.0]


def test_what_cannot_change_is_not_retried() -> None:
    policy = RetryPolicy(max_retries=5, jitter=0.0)
    calls = 0
    with pytest.raises(elasticsearch.ApiError):
        for attempt in policy.retrying(
            retry=retry_if_exception(is_retryable), sleep=lambda _: None, reraise=True
        ):
            with attempt:
                calls += 1
                raise es_api_error(400)
    assert calls == 1


@pytest.mark.parametrize("status", sorted(RETRYABLE_STATUS))
def test_busy_statuses_are_retryable_for_both_clients(status: int) -> None:
    assert is_retryable(es_api_error(status))
    assert is_retryable(opensearchpy.TransportError(status, "busy", {}))
    assert status_of(es_api_error(status)) == status


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413])
def test_client_errors_are_not_retryable(status: int) -> None:
    assert not is_retryable(es_api_error(status))
    assert not is_retryable(opensearchpy.TransportError(status, "no", {}))


def test_connection_failures_are_retryable_and_other_errors_are_not() -> None:
    assert is_retryable(opensearchpy.ConnectionTimeout("TIMEOUT", "slow", None))
    assert not is_retryable(ValueError("a bug"))


def test_a_policy_that_cannot_work_is_refused() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=-0.1)
