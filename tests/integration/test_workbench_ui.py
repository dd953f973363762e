"""The workbench page in a real browser: headless Chromium (Debian's ``chromium`` package,
which ``.ci/run`` installs) driven by Playwright, against ``splade-es serve`` on 127.0.0.1 in
front of the test cluster with an indexed corpus.

A failing browser test saves a screenshot (and the page's HTML) to
``$SPLADE_ES_TEST_ARTIFACTS`` (default: ``<tmp>/splade-es-test-artifacts``) and names it in
the failure; a passing run saves one there too, and to ``docs/workbench.png`` (the README's)
with ``SPLADE_ES_WRITE_SCREENSHOT=1``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from splade_es import QueryBuilder, SpladeEncoder, create_index, search
from splade_es.beir import read_qrels
from splade_es.workbench.compare import query_measures
from splade_es.workbench.configurations import parse_configurations
from splade_es.workbench.judgments import Judgments, new_query_id
from splade_es.workbench.runner import ClusterSearcher
from splade_es.workbench.ui import WorkbenchSettings
from tests.integration.corpus import bulk_index, document_text, make_documents
from tests.integration.serve_support import post_json, running_proxy

pytestmark = pytest.mark.integration

XSS = "<img src=x onerror=alert(1)>"
CONFIGS = ["bm25", "splade", "hybrid"]
REPO = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser_path() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def artifacts() -> Path:
    folder = Path(
        os.environ.get("SPLADE_ES_TEST_ARTIFACTS")
        or Path(tempfile.gettempdir()) / "splade-es-test-artifacts"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


@pytest.fixture
def corpus(cluster, index_name, encoder) -> dict[str, dict[str, Any]]:
    """20 documents and one whose title is HTML (its text shares doc-0's words, so that it
    ranks for doc-0's text)."""
    docs = make_documents(20, seed=3)
    docs.append({"id": "doc-xss", "title": XSS, "text": docs[0]["text"], "lang": "en"})
    vectors = encoder.encode_documents([document_text(d) for d in docs])
    create_index(cluster.client, index_name, replicas=0)
    builder = QueryBuilder.for_index(cluster.client, index_name)
    bulk_index(cluster.client, index_name, docs, vectors, builder.codec(vectors.vocab))
    return {d["id"]: d for d in docs}


@pytest.fixture
def served(cluster, index_name, corpus, encoder, tmp_path) -> Iterator[Any]:
    with running_proxy(cluster.url, encoder) as app:
        app.state.workbench = WorkbenchSettings(
            configurations=parse_configurations(CONFIGS),
            index=index_name,
            judgments=Judgments(tmp_path / "judgments.tsv"),
        )
        yield app


def test_the_page_shows_what_compare_computes(cluster, index_name, corpus, served, encoder):
    text = corpus["doc-0"]["text"]
    status, answer = post_json(served, "/_splade/ui/search", {"q": text})
    assert status == 200, answer
    searcher = ClusterSearcher(cluster.client, index_name, encoder_for=lambda _: encoder)
    for shown, config in zip(answer["columns"], parse_configurations(CONFIGS), strict=True):
        expected = searcher.column(config, text)
        assert shown["error"] is None and expected.error is None
        assert [h["id"] for h in shown["hits"]] == [h.id for h in expected.hits]
        for hit, want in zip(shown["hits"], expected.hits, strict=True):
            assert hit["score"] == pytest.approx(want.score, rel=1e-6)
            assert [c["token"] for c in hit["contributions"]] == [
                c.token for c in want.contributions
            ]
    splade = answer["columns"][1]
    assert "doc-xss" in [h["id"] for h in splade["hits"]]
    for hit in splade["hits"]:
        total = sum(c["contribution"] for c in hit["contributions"])
        assert total == pytest.approx(hit["score"], rel=1e-5)


def test_the_page_fuses_rrf_and_linear_hybrids_as_compare(
    cluster, index_name, corpus, served, encoder
):
    text = corpus["doc-5"]["text"]
    configs = ["hybrid:rrf,fusion=client", "hybrid:linear:0.3,fusion=client"]
    status, answer = post_json(served, "/_splade/ui/search", {"q": text, "configs": configs})
    assert status == 200, answer
    searcher = ClusterSearcher(cluster.client, index_name, encoder_for=lambda _: encoder)
    for shown, config in zip(answer["columns"], parse_configurations(configs), strict=True):
        expected = searcher.column(config, text)
        assert shown["error"] is None and "client" in shown["fusion_note"]
        assert [h["id"] for h in shown["hits"]] == [h.id for h in expected.hits]
        assert [h["score"] for h in shown["hits"]] == pytest.approx(
            [h.score for h in expected.hits], rel=1e-6
        )
    # fusion=auto (the default): the engine where the cluster can fuse, else serve; it says so.
    status, answer = post_json(
        served, "/_splade/ui/search", {"q": text, "configs": ["splade", "hybrid:rrf"]}
    )
    assert status == 200, answer
    hybrid = answer["columns"][1]
    assert hybrid["error"] is None and hybrid["hits"], hybrid
    assert "fusion=auto" in hybrid["fusion_note"]


# ---------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = browser_path()
    if path is None:
        pytest.skip(
            "no Chromium on this machine (apt-get install -y chromium chromium-driver, as "
            ".ci/run does, failed or was not run)"
        )
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    with playwright_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        launched = playwright.chromium.launch(
            executable_path=path, headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


@contextlib.contextmanager
def page_of(browser, name: str, height: int = 1100) -> Iterator[Any]:
    """A page that records alerts and script errors; on failure a screenshot and the HTML
    are saved and named in the error."""
    page = browser.new_page(viewport={"width": 1500, "height": height})
    page.dialogs = []
    page.errors = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    try:
        yield page
    except BaseException as exc:
        shot = artifacts() / f"{name}-failure.png"
        page.screenshot(path=str(shot), full_page=True)
        (artifacts() / f"{name}-failure.html").write_text(page.content())
        raise AssertionError(f"{exc}\n(screenshot: {shot})") from exc
    finally:
        page.close()


def columns_of(page) -> dict[str, Any]:
    return {
        column.get_attribute("data-label"): column
        for column in page.locator("[data-testid=column]").all()
    }


def expect_ndcg(page, label: str, value: Any) -> None:
    """Wait until the column's nDCG@10 reads ``value`` (Playwright's ``expect``: the page's
    Content-Security-Policy forbids the eval that ``wait_for_function`` needs)."""
    from playwright.sync_api import expect

    expect(page.locator(f"[data-testid=ndcg][data-label='{label}']")).to_have_attribute(
        "data-value", value
    )


def ndcg_shown(page, label: str) -> str:
    return page.locator(f"[data-testid=ndcg][data-label='{label}']").get_attribute("data-value")


def test_search_judge_and_escape_in_the_browser(
    browser, served, cluster, index_name, corpus, encoder, tmp_path
):
    text = corpus["doc-0"]["text"]
    with page_of(browser, "workbench") as page:
        page.goto(f"{served.state.url}/_splade/ui")
        page.get_by_test_id("query-input").fill(text)
        page.get_by_test_id("query-input").press("Enter")
        page.locator("[data-testid=column] [data-testid=hit]").first.wait_for()
        columns = columns_of(page)
        assert list(columns) == CONFIGS
        splade = columns["splade"]
        expected = search(cluster.client, index_name, text, encoder=encoder, k=10)
        hits = splade.locator("[data-testid=hit]")
        assert [h.get_attribute("data-id") for h in hits.all()] == [h.id for h in expected.hits]

        # Each SPLADE hit: its bars add up to the score shown (4 decimals).
        for hit in hits.all():
            bars = hit.locator("[data-testid=contribution]")
            assert bars.count() > 0
            total = sum(float(b.get_attribute("data-value")) for b in bars.all())
            shown = float(hit.get_by_test_id("score").text_content())
            assert abs(total - shown) <= 5e-5 + 1e-6 * abs(shown), hit.get_attribute("data-id")
        assert columns["bm25"].locator("[data-testid=contribution]").count() == 0
        tokens = page.locator("[data-testid=query-token]")
        assert tokens.count() > 0 and all(
            t.get_attribute("data-kept") == "true" for t in tokens.all()
        )

        # The HTML title is text: no element made of it, no alert.
        xss = splade.locator("[data-testid=hit][data-id='doc-xss']")
        assert xss.get_by_test_id("title").text_content() == XSS
        assert page.locator("img").count() == 0 and not page.dialogs

        # Judging: the file and nDCG@10 follow each click.
        qid = new_query_id(text)
        assert ndcg_shown(page, "splade") == ""
        second = hits.nth(1)
        judged_id = second.get_attribute("data-id")
        second.click()
        expect_ndcg(page, "splade", re.compile(r"^0\.\d+"))
        assert read_qrels(tmp_path / "judgments.tsv") == {qid: {judged_id: 1}}
        ranking = {h.id: h.score for h in expected.hits}
        want = query_measures(ranking, {judged_id: 1})["ndcg@10"]
        assert float(ndcg_shown(page, "splade")) == pytest.approx(want, abs=1e-6)
        assert 0 < want < 1
        assert "relevant" in (second.get_attribute("class") or "")
        second.click()  # again: not relevant
        expect_ndcg(page, "splade", "0")
        assert read_qrels(tmp_path / "judgments.tsv") == {qid: {judged_id: 0}}
        assert second.get_attribute("data-judgment") == "0"
        assert not page.errors, page.errors
        save_screenshot(page, hits.first)


def save_screenshot(page, first_hit) -> None:
    """A picture of a passing run: the first SPLADE hit judged relevant."""
    first_hit.click()
    expect_ndcg(page, "splade", re.compile(r"^(0\.\d+|1)$"))
    page.screenshot(path=str(artifacts() / "workbench.png"), full_page=True)


def test_the_query_comes_from_the_url(browser, served, index_name, corpus):
    text = corpus["doc-3"]["title"]
    query = urlencode(
        [("index", index_name), ("q", text), ("config", "bm25"), ("config", "splade")]
    )
    with page_of(browser, "workbench-url") as page:
        page.goto(f"{served.state.url}/_splade/ui?{query}")
        page.locator("[data-testid=column] [data-testid=hit]").first.wait_for()
        assert list(columns_of(page)) == ["bm25", "splade"]
        assert page.get_by_test_id("query-input").input_value() == text
        assert page.locator("[data-testid=query-token]").count() > 0
        assert not page.errors, page.errors


def test_one_search_one_request_after_a_key(browser, cluster, index_name, corpus, encoder):
    """With serve's API keys the page asks for one; once it is given, a search is one
    request (the key button reloads the settings, it wires no second listener)."""
    from splade_es.api_keys import ApiKeys
    from tests.unit.test_api_keys import FIRST, KEYS

    with (
        running_proxy(cluster.url, encoder, api_keys=ApiKeys.parse(KEYS)) as app,
        page_of(browser, "workbench-key") as page,
    ):
        app.state.workbench = WorkbenchSettings(
            configurations=parse_configurations(["bm25", "splade"]), index=index_name
        )
        searches: list[str] = []
        page.on("request", lambda r: searches.append(r.url) if "/ui/search" in r.url else None)
        page.goto(f"{app.state.url}/_splade/ui")
        page.locator("#key-box").wait_for()  # the settings answered 401
        page.locator("#key-input").fill(FIRST)
        with page.expect_response(lambda r: "/ui/settings" in r.url and r.status == 200):
            page.locator("#key-button").click()
        for n in (1, 2):
            page.get_by_test_id("query-input").fill(corpus["doc-0"]["text"])
            with page.expect_response(lambda r: "/ui/search" in r.url and r.status == 200):
                page.get_by_test_id("query-input").press("Enter")
            page.wait_for_load_state("networkidle")
            assert len(searches) == n, searches  # before the fix: 2, then 4
        assert page.locator("[data-testid=column] [data-testid=hit]").count() > 0
        assert not page.errors, page.errors


README_QUERY = "which code section covers the deduction of equipment"
README_CONFIGS = ["bm25", "splade", "splade,top_k=8,name=splade-top8", "hybrid:rrf"]


def test_the_readme_screenshot(browser, cluster, index_name, real_model_dir, tmp_path):
    """The README's picture: the bundled sample with the real checkpoint, the README's query,
    ex1 judged relevant; saved to docs/workbench.png with SPLADE_ES_WRITE_SCREENSHOT=1."""
    import json

    encoder = SpladeEncoder.from_pretrained(str(real_model_dir))
    lines = (REPO / "examples" / "sample.jsonl").read_text().splitlines()
    docs = [
        {"id": d["_id"], **{k: v for k, v in d.items() if k != "_id"}}
        for d in map(json.loads, lines)
    ]
    vectors = encoder.encode_documents([document_text(d) for d in docs])
    create_index(cluster.client, index_name, replicas=0)
    builder = QueryBuilder.for_index(cluster.client, index_name)
    bulk_index(cluster.client, index_name, docs, vectors, builder.codec(vectors.vocab))
    with running_proxy(cluster.url, encoder) as app, page_of(browser, "readme", 760) as page:
        app.state.workbench = WorkbenchSettings(
            configurations=parse_configurations(README_CONFIGS),
            index=index_name,
            judgments=Judgments(tmp_path / "judgments.tsv"),
        )
        query = urlencode({"index": index_name, "q": README_QUERY})
        page.goto(f"{app.state.url}/_splade/ui?{query}")
        page.locator("[data-testid=column] [data-testid=hit]").first.wait_for()
        columns = columns_of(page)
        assert list(columns) == [c.split(",name=")[-1] for c in README_CONFIGS]
        pruned = columns["splade-top8"].locator("[data-testid=pruned-contribution]")
        assert pruned.count() > 0  # tokens the top-8 pruning removed, shown apart
        struck = page.locator("[data-testid=query-token][data-kept=false]")
        assert struck.count() > 0 and page.locator(".query-row").count() == 2
        for label in ("splade", "splade-top8"):
            for hit in columns[label].locator("[data-testid=hit]").all():
                bars = hit.locator("[data-testid=contribution]").all()
                total = sum(float(b.get_attribute("data-value")) for b in bars)
                shown = float(hit.get_by_test_id("score").text_content())
                assert abs(total - shown) <= 5e-5 + 1e-6 * abs(shown)
        columns["splade"].locator("[data-testid=hit][data-id='ex1']").click()
        expect_ndcg(page, "splade", re.compile(r"^(0\.\d+|1)$"))
        assert read_qrels(tmp_path / "judgments.tsv") == {new_query_id(README_QUERY): {"ex1": 1}}
        assert not page.errors, page.errors
        shot = artifacts() / "workbench-readme.png"
        page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("SPLADE_ES_WRITE_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "workbench.png")
