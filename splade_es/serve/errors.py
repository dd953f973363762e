"""The one place an error becomes an HTTP answer of ``splade-es serve``.

Errors look like the cluster's own (``{"error": {"type", "reason"}, "status"}``), so every
client raises its usual exception; ``HTTP_ERRORS`` says which status each error of
``splade_es.exceptions`` gets: 400 for a malformed clause or a bad value in a request, 413 for
a body over the limit, 429 when the encode queue is full, 502 when the cluster cannot be
reached, 504 when it does not answer in time.
"""

from __future__ import annotations

import json
import logging
import uuid

from starlette.responses import Response

from ..exceptions import (
    AuthenticationError,
    ClusterError,
    ClusterTimeoutError,
    ConfigurationError,
    ConnectionFailedError,
    InputError,
    ModelLoadError,
    OverloadedError,
    ServiceUnavailableError,
    SpladeEsError,
    UnsupportedFeatureError,
)
from . import rewrite, writes
from .enrich import TooManyRequests
from .exchange import RawResponse
from .facts import UpstreamAnswered
from .metrics import Metrics
from .service import HttpError, RequestTimeout

# The logger internal errors have always gone to (operators filter on it): the app's.
log = logging.getLogger("splade_es.serve.app")

# (status, Elasticsearch error type) for each class, looked up along the error's MRO, so the
# most specific class listed wins. An error that carries its own ``error_type`` (RewriteError)
# or ``status`` (HttpError) keeps it.
HTTP_ERRORS: dict[type[BaseException], tuple[int, str]] = {
    # The request is wrong: a malformed clause or body, a bad value, an engine feature the
    # index's engine lacks (the engine itself would refuse such a query with a 400).
    InputError: (400, "illegal_argument_exception"),
    ConfigurationError: (400, "illegal_argument_exception"),
    UnsupportedFeatureError: (400, "illegal_argument_exception"),
    rewrite.RewriteError: (400, "parsing_exception"),
    writes.WriteBodyError: (400, "illegal_argument_exception"),
    # The proxy cannot take the work now: the same request may succeed later.
    OverloadedError: (429, "es_rejected_execution_exception"),
    TooManyRequests: (429, "es_rejected_execution_exception"),
    ServiceUnavailableError: (503, "unavailable_exception"),
    # The proxy's own time limit for a request (--max-request-seconds).
    RequestTimeout: (504, "timeout_exception"),
    # The cluster behind the proxy failed it (its own answers are relayed as they came).
    ClusterTimeoutError: (504, "timeout_exception"),
    ConnectionFailedError: (502, "upstream_unavailable_exception"),
    AuthenticationError: (502, "security_exception"),  # the proxy's own credentials
    ClusterError: (502, "upstream_exception"),
    # The proxy itself is broken: its model, or a bug (details go to the log only).
    ModelLoadError: (500, "illegal_state_exception"),
    SpladeEsError: (500, "internal_error"),
    Exception: (500, "internal_error"),
}
INTERNAL_REASON = "internal error in splade-es serve"


def http_error(exc: BaseException) -> tuple[int, str, str]:
    """(status, error type, reason) that ``exc`` is answered with (``HTTP_ERRORS``)."""
    status, error_type = next(HTTP_ERRORS[c] for c in type(exc).__mro__ if c in HTTP_ERRORS)
    if status == 500:  # the proxy's own failure: its details (paths, code) stay in the log
        return status, error_type, INTERNAL_REASON
    if isinstance(exc, HttpError):
        status = exc.status
    return status, getattr(exc, "error_type", error_type), str(exc)


def error_body(status: int, error_type: str, reason: str) -> bytes:
    """Elasticsearch's error shape; clients turn it into their usual exceptions."""
    cause = {"type": error_type, "reason": reason}
    return json.dumps({"error": {"root_cause": [cause], **cause}, "status": status}).encode()


def error_response(exc: Exception, metrics: Metrics) -> Response:
    """The answer to a request that failed with ``exc``: the cluster's own answer when it gave
    one, else ``http_error``'s in the cluster's error shape (an internal error logged, with an
    id the answer names)."""
    if isinstance(exc, UpstreamAnswered):  # not an error of ours: the cluster's answer
        return RawResponse(exc.response)
    status, error_type, reason = http_error(exc)
    if isinstance(exc, ClusterError) and status >= 500:
        metrics.upstream_errors.inc()
    if status == 500:
        # Details to the log, not the client; the id ties the answer to the traceback.
        request_id = uuid.uuid4().hex[:16]
        log.error("internal error (request id %s)", request_id, exc_info=exc)
        reason = f"{reason} (request id {request_id}: see the proxy's log)"
    return Response(error_body(status, error_type, reason), status, media_type="application/json")
