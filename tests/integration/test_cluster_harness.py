"""The harness itself, and the smallest end-to-end check that a cluster stores and
scores rank features as SPLADE needs: linear function, boost = query weight."""

from __future__ import annotations

import pytest

from splade_es.connect import Cluster

pytestmark = pytest.mark.integration


def test_cluster_reports_engine_and_version(cluster):
    detected = Cluster.from_client(cluster.client)
    assert detected.engine in ("elasticsearch", "opensearch")
    assert detected.engine == cluster.engine
    assert detected.version >= (2, 0, 0)


def test_rank_features_document_found_by_linear_rank_feature_query(cluster, index_name):
    client = cluster.client
    client.indices.create(
        index=index_name,
        body={
            "mappings": {
                "properties": {
                    "doc_id": {"type": "keyword"},
                    "text": {"type": "text"},
                    "splade": {"type": "rank_features"},
                }
            }
        },
    )
    client.index(
        index=index_name,
        id="d1",
        body={
            "doc_id": "d1",
            "text": "tax depreciation",
            "splade": {"tax": 1.5, "depreciation": 0.25},
        },
        refresh=True,
    )
    client.index(
        index=index_name,
        id="d2",
        body={"doc_id": "d2", "text": "garlic", "splade": {"garlic": 2.0}},
        refresh=True,
    )
    query = {
        "bool": {
            "should": [
                {"rank_feature": {"field": "splade.tax", "linear": {}, "boost": 2.0}},
                {"rank_feature": {"field": "splade.depreciation", "linear": {}, "boost": 4.0}},
            ]
        }
    }
    hits = client.search(index=index_name, body={"query": query})["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["d1"]
    # 1.5 and 0.25 are exact in the 9-bit storage precision, so the score is exact too.
    assert hits[0]["_score"] == pytest.approx(1.5 * 2.0 + 0.25 * 4.0, rel=1e-6)
