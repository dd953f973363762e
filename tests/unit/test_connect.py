from __future__ import annotations

import logging

import pytest

from splade_es.connect import (
    ConnectionConfig,
    _compat_client_class,
    compat_headers,
    engine_from_info,
    parse_version,
    redact_url,
)
from splade_es.exceptions import ConfigurationError


def test_secrets_stay_out_of_repr():
    config = ConnectionConfig(hosts=("https://es:9200",), api_key="s3cr3t-key")
    assert "s3cr3t-key" not in repr(config)
    basic = ConnectionConfig(hosts=("https://es:9200",), username="elastic", password="hunter2")
    assert "hunter2" not in repr(basic)
    assert "elastic" in repr(basic)


def test_credentials_in_urls_are_redacted_in_messages():
    assert (
        redact_url("https://elastic:hunter2@es.example:9243/x") == "https://***@es.example:9243/x"
    )
    assert redact_url("http://localhost:9200") == "http://localhost:9200"
    config = ConnectionConfig.from_urls("https://u:hunter2@a:9200, http://b:9200")
    assert config.hosts == ("https://u:hunter2@a:9200", "http://b:9200")
    assert "hunter2" not in config.redacted_hosts
    with pytest.raises(ConfigurationError) as caught:
        ConnectionConfig.from_urls("ftp://u:hunter2@a")
    assert "hunter2" not in str(caught.value)


def test_tls_is_verified_by_default_and_disabling_it_warns(caplog):
    assert ConnectionConfig(hosts=("https://a:9200",)).verify_certs is True
    with caplog.at_level(logging.WARNING, logger="splade_es.connect"):
        ConnectionConfig(hosts=("https://a:9200",), verify_certs=False)
    assert "verification is disabled" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "no cluster given"),
        ({"hosts": ("http://a",), "cloud_id": "x:y"}, "not both"),
        ({"cloud_id": "x:y", "engine": "opensearch"}, "Elastic Cloud"),
        ({"hosts": ("http://a",), "api_key": "k", "username": "u", "password": "p"}, "not both"),
        ({"hosts": ("http://a",), "username": "u"}, "both a username and a password"),
        ({"hosts": ("http://a",), "engine": "solr"}, "unknown engine"),
    ],
)
def test_conflicting_options_are_configuration_errors(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        ConnectionConfig(**kwargs)


def test_engine_and_version_from_info():
    assert engine_from_info({"version": {"number": "8.15.1", "build_flavor": "default"}}) == (
        "elasticsearch",
        (8, 15, 1),
    )
    assert engine_from_info({"version": {"number": "2.19.0", "distribution": "opensearch"}}) == (
        "opensearch",
        (2, 19, 0),
    )
    assert parse_version("9.0.0-SNAPSHOT") == (9, 0, 0)
    assert parse_version("3.3") == (3, 3, 0)


def test_compat_headers_ask_for_the_server_major():
    headers = {
        "accept": "application/json",
        "content-type": "application/x-ndjson",
        "x-opaque-id": "1",
    }
    rewritten = compat_headers(headers, 8)
    assert rewritten["accept"] == "application/vnd.elasticsearch+json; compatible-with=8"
    assert rewritten["content-type"] == "application/vnd.elasticsearch+x-ndjson; compatible-with=8"
    assert rewritten["x-opaque-id"] == "1"
    assert compat_headers({"accept": "text/plain"}, 8) == {"accept": "text/plain"}


def test_compat_client_keeps_its_class_through_options():
    cls = _compat_client_class(8)
    client = cls(hosts=["http://localhost:9200"])
    assert type(client.options(request_timeout=5)) is cls
    client.close()
