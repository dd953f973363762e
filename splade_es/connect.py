"""Build an Elasticsearch or OpenSearch client and find out what is on the other end.

Everything that talks to a cluster goes through the official client objects, so an
application can hand us its own configured client instead of a URL::

    from splade_es import ConnectionConfig, connect

    cluster = connect(ConnectionConfig(hosts=("http://localhost:9200",)))
    print(cluster.engine, cluster.version)   # "opensearch" (3, 3, 0)

    cluster = Cluster.from_client(my_existing_client)   # detects engine and version

Every function of the package that takes a client also takes the ``Cluster`` that
``connect`` returns (``client_of`` unwraps it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import elasticsearch
import opensearchpy
from elastic_transport.client_utils import parse_cloud_id

from .exceptions import (
    AuthenticationError,
    ClusterError,
    ClusterTimeoutError,
    ConfigurationError,
    ConnectionFailedError,
    UnsupportedFeatureError,
)

log = logging.getLogger(__name__)

Engine = Literal["elasticsearch", "opensearch"]
EngineChoice = Literal["auto", "elasticsearch", "opensearch"]
Version = tuple[int, int, int]

ENGINES: tuple[Engine, ...] = ("elasticsearch", "opensearch")

Client: TypeAlias = "elasticsearch.Elasticsearch | opensearchpy.OpenSearch"
"""A synchronous client of either engine (an object with the same methods does too: tests)."""
AsyncClient: TypeAlias = "elasticsearch.AsyncElasticsearch | opensearchpy.AsyncOpenSearch"
"""An asynchronous client of either engine (``splade_es.aio``)."""
ClientOrCluster: TypeAlias = "Client | Cluster"
"""What every function that talks to a cluster takes: a client, or ``connect``'s ``Cluster``."""


@dataclass(frozen=True, kw_only=True)
class ConnectionConfig:
    """How to reach a cluster. Secrets are kept out of ``repr`` and never logged.

    TLS certificates are verified unless ``verify_certs=False`` is asked for explicitly.
    """

    hosts: tuple[str, ...] = ()
    cloud_id: str | None = None
    api_key: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_certs: str | None = None
    verify_certs: bool = True
    engine: EngineChoice = "auto"
    request_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.engine not in ("auto", *ENGINES):
            raise ConfigurationError(
                f"unknown engine {self.engine!r}: expected auto, elasticsearch or opensearch"
            )
        if not self.hosts and not self.cloud_id:
            raise ConfigurationError(
                "no cluster given: pass a URL (--url / SPLADE_ES_URL) or a cloud id"
            )
        if self.hosts and self.cloud_id:
            raise ConfigurationError("give either URLs or a cloud id, not both")
        if self.cloud_id and self.engine == "opensearch":
            raise ConfigurationError("a cloud id names an Elastic Cloud deployment, not OpenSearch")
        if self.api_key and (self.username or self.password):
            raise ConfigurationError("give either an API key or a username/password, not both")
        if (self.username is None) != (self.password is None):
            raise ConfigurationError("basic auth needs both a username and a password")
        for host in self.hosts:
            _check_url(host)
        if self.cloud_id:
            try:
                parse_cloud_id(self.cloud_id)
            except ValueError as exc:
                raise ConfigurationError.bad_value(
                    "cloud_id", self.cloud_id, "must be an Elastic Cloud id (NAME:BASE64)"
                ) from exc
        if not self.verify_certs:
            log.warning("TLS certificate verification is disabled; use only for local testing")

    @classmethod
    def from_urls(cls, urls: str, **options: Any) -> ConnectionConfig:
        """Config from one URL or a comma-separated list of URLs."""
        hosts = tuple(u.strip() for u in urls.split(",") if u.strip())
        return cls(hosts=hosts, **options)

    @property
    def redacted_hosts(self) -> str:
        """The hosts with any credentials in them masked, for messages."""
        return ", ".join(redact_url(h) for h in self.hosts) or f"cloud id {self.cloud_id}"


def _check_url(url: str) -> None:
    """``ConfigurationError`` (``option="hosts"``) unless ``url`` is http(s)://HOST[:PORT]...;
    the message shows it with any credentials masked."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  (parsing the port is the check: "x:abc" raises)
    except ValueError:
        ok = False
    else:
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    if not ok:
        raise ConfigurationError.bad_value(
            "hosts", redact_url(url), "must be http:// or https:// URLs with a host"
        )


def redact_url(url: str) -> str:
    """``https://user:secret@host:9200`` -> ``https://***@host:9200``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def parse_version(number: str) -> Version:
    """``"8.15.0-SNAPSHOT"`` -> ``(8, 15, 0)``."""
    nums = [int(n) for n in re.findall(r"\d+", number.split("-")[0])[:3]]
    return tuple(nums + [0] * (3 - len(nums)))  # type: ignore[return-value]


@dataclass(frozen=True)
class Cluster:
    """A connected client plus what we learnt about the engine behind it."""

    client: Any
    engine: Engine
    version: Version

    @classmethod
    def from_client(cls, client: Any) -> Cluster:
        """Wrap a client the application already configured; engine and version from info()."""
        info = call(client.info, "reading cluster info")
        engine, version = engine_from_info(info)
        return cls(client=client, engine=engine, version=version)

    @property
    def description(self) -> str:
        return f"{self.engine} {'.'.join(map(str, self.version))}"

    def close(self) -> None:
        self.client.close()


def client_of(target: ClientOrCluster) -> Any:
    """The client inside a ``Cluster``, or ``target`` itself when it is already a client."""
    return target.client if isinstance(target, Cluster) else target


def engine_from_info(info: Any) -> tuple[Engine, Version]:
    """Engine and version from the body of ``GET /``."""
    version = info.get("version", {})
    engine: Engine = (
        "opensearch" if version.get("distribution") == "opensearch" else "elasticsearch"
    )
    return engine, parse_version(str(version.get("number", "0")))


def connect(config: ConnectionConfig) -> Cluster:
    """Connect, detect the engine (unless ``config.engine`` forces one) and its version."""
    engine: Engine
    if config.cloud_id:
        engine = "elasticsearch"
    elif config.engine != "auto":
        engine = config.engine
    else:
        probe = _opensearch_client(config)
        try:
            engine, _ = engine_from_info(call(probe.info, f"connecting to {config.redacted_hosts}"))
        finally:
            probe.close()
    if engine == "opensearch":
        return Cluster.from_client(_opensearch_client(config))
    client = _elasticsearch_client(config, elasticsearch.Elasticsearch)
    cluster = Cluster.from_client(client)
    if cluster.version[0] < _ES_CLIENT_MAJOR:
        # A newer client asks for its own REST major, which an older server refuses;
        # re-open asking for the server's major (REST API compatibility).
        client.close()
        client = _elasticsearch_client(config, _compat_client_class(cluster.version[0]))
        cluster = Cluster(client=client, engine="elasticsearch", version=cluster.version)
    return cluster


def _elasticsearch_client(config: ConnectionConfig, cls: type) -> Any:
    kwargs: dict[str, Any] = {
        "verify_certs": config.verify_certs,
        "request_timeout": config.request_timeout,
    }
    if config.cloud_id:
        kwargs["cloud_id"] = config.cloud_id
    else:
        kwargs["hosts"] = list(config.hosts)
    if config.ca_certs:
        kwargs["ca_certs"] = config.ca_certs
    if config.api_key:
        kwargs["api_key"] = config.api_key
    if config.username is not None:
        kwargs["basic_auth"] = (config.username, config.password)
    if not config.verify_certs:
        kwargs["ssl_show_warn"] = False
    return _construct(cls, kwargs)


def _opensearch_client(config: ConnectionConfig) -> opensearchpy.OpenSearch:
    kwargs: dict[str, Any] = {
        "hosts": list(config.hosts),
        "verify_certs": config.verify_certs,
        "timeout": config.request_timeout,
        "ssl_show_warn": config.verify_certs,
    }
    if config.ca_certs:
        kwargs["ca_certs"] = config.ca_certs
    if config.username is not None:
        kwargs["http_auth"] = (config.username, config.password)
    if config.api_key:
        kwargs["headers"] = {"authorization": f"ApiKey {config.api_key}"}
    return _construct(opensearchpy.OpenSearch, kwargs)


def _construct(cls: type, kwargs: dict[str, Any]) -> Any:
    """``cls(**kwargs)``; a client that refuses its settings (an unreadable CA bundle, a
    value our own checks let through) is a ConfigurationError, like the checks'."""
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigurationError(f"the connection settings were refused: {exc}") from exc


_ES_CLIENT_MAJOR = int(elasticsearch.__versionstr__.split(".")[0])
_PLAIN_MIMETYPE = re.compile(r"^application/(json|x-ndjson)$")


def compat_headers(headers: dict[str, str], server_major: int) -> dict[str, str]:
    """Rewrite plain JSON/NDJSON Accept and Content-Type headers to REST API compatibility
    mode for ``server_major``; a header the client already versioned is left alone."""
    rewritten = dict(headers)
    for name, value in headers.items():
        match = _PLAIN_MIMETYPE.match(value)
        if name.lower() in ("accept", "content-type") and match:
            rewritten[name] = (
                f"application/vnd.elasticsearch+{match.group(1)}; compatible-with={server_major}"
            )
    return rewritten


def _compat_client_class(server_major: int) -> type:
    """An Elasticsearch client class that speaks REST API version ``server_major``."""

    class CompatElasticsearch(elasticsearch.Elasticsearch):
        def perform_request(self, method: str, path: str, **kwargs: Any) -> Any:
            headers = compat_headers(dict(kwargs.pop("headers", None) or {}), server_major)
            return super().perform_request(method, path, headers=headers, **kwargs)

    CompatElasticsearch.__name__ = f"Elasticsearch{server_major}Compat"
    return CompatElasticsearch


def call(func: Any, doing: str) -> Any:
    """Call ``func()`` (a client call), mapping the clients' errors onto ours; ``doing``
    says what for, in the message."""
    try:
        return func()
    except (elasticsearch.AuthenticationException, opensearchpy.AuthenticationException) as exc:
        raise AuthenticationError(f"{doing}: the cluster rejected the credentials (401)") from exc
    except (elasticsearch.AuthorizationException, opensearchpy.AuthorizationException) as exc:
        if "license" in str(exc).lower():
            raise UnsupportedFeatureError(
                f"{doing}: the cluster's license does not cover this feature ({_first_line(exc)})"
            ) from exc
        raise AuthenticationError(f"{doing}: permission denied (403)") from exc
    except (elasticsearch.ConnectionTimeout, opensearchpy.ConnectionTimeout) as exc:
        raise ClusterTimeoutError(f"{doing}: no answer in time ({_first_line(exc)})") from exc
    except (elasticsearch.ConnectionError, opensearchpy.ConnectionError) as exc:
        raise ConnectionFailedError(f"{doing}: {type(exc).__name__}: {_first_line(exc)}") from exc
    except (elasticsearch.ApiError, opensearchpy.TransportError) as exc:
        if _UNSUPPORTED.search(str(exc)):
            raise UnsupportedFeatureError(f"{doing}: {_first_line(exc)}") from exc
        raise ClusterError(f"{doing}: {_first_line(exc)}") from exc
    except elasticsearch.TransportError as exc:  # the transport's own: TLS, serialization
        raise ClusterError(f"{doing}: {type(exc).__name__}: {_first_line(exc)}") from exc


# What engines answer for a query type, field type or processor they do not know.
_UNSUPPORTED = re.compile(
    r"unknown query|no \[query\] registered|unsupported_operation_exception|"
    r"no handler found for uri|No mapper found for type|Invalid processor type|"
    r"unknown retriever|no such processor",
    re.IGNORECASE,
)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
