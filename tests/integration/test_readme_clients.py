"""The README's Java and Node.js client examples, compiled and run as written against
``splade-es serve`` in front of the test cluster (the real OpenSearch node where it runs).

Each example searches "tax depreciation" in the bundled sample and prints the top 5; they must be
the hits and scores ``splade-es search`` prints. The ```java blocks are written into a copy of
tests/clients/java/ (a Maven project: the clients come from Maven Central, ~/.m2 keeps them) and
compiled there; the ```js blocks run with the clients tests/integration/node/ installs from npm.
Only the proxy's address and the index name are changed. Elasticsearch's clients go through a gate
that lets them talk to an OpenSearch cluster (``forward_to(plain_json=True)``); the OpenSearch
ones go straight to the proxy. Skipped, with the reason, only where java/mvn or node/npm are
missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from splade_es import SpladeEncoder
from splade_es.cli import main as cli
from tests.conftest import REPO_ROOT, real_model_path
from tests.integration.serve_support import StubServer, forward_to, running_proxy
from tests.integration.test_readme import FENCE

pytestmark = pytest.mark.integration

TEXT = "tax depreciation"
README_URL = "http://localhost:9280"
JAVA_PROJECT = REPO_ROOT / "tests" / "clients" / "java"
NODE_DIR = REPO_ROOT / "tests" / "integration" / "node"
# The README says Elasticsearch's low-level client runs the low-level example with these
# imports instead; the test compiles and runs that variant too, so the sentence stays true.
ES_LOW_LEVEL_IMPORTS = {
    "org.opensearch.client.": "org.elasticsearch.client.",
    "org.apache.hc.core5.http.io.entity.EntityUtils": "org.apache.http.util.EntityUtils",
    "org.apache.hc.core5.http.HttpHost": "org.apache.http.HttpHost",
}


def readme_blocks(language: str) -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) == language]


def for_test(code: str, url: str, index: str) -> str:
    """The example with the test proxy's address and index instead of the README's."""
    assert README_URL in code and TEXT in code, code
    code = code.replace(README_URL, url)
    # The index: "docs" as a string or JSON value, and /docs/ in a path.
    code, n = re.subn(r"(?<=[\"'/])docs(?=[\"'/])", index, code)
    assert n, code
    return code


def top_hits(output: str) -> list[tuple[str, float]]:
    """What an example printed: a search response as JSON, or one "id score" line per hit."""
    output = output.strip()
    if output.startswith("{"):
        return [(h["_id"], h["_score"]) for h in json.loads(output)["hits"]["hits"]]
    return [(line.split()[0], float(line.split()[1])) for line in output.splitlines()]


def assert_same_hits(printed: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [i for i, _ in printed] == [i for i, _ in expected]
    assert [s for _, s in printed] == pytest.approx([s for _, s in expected], rel=1e-6)


@pytest.fixture(scope="module")
def model_dir(search_model_dir) -> Path:
    real = real_model_path()
    return real if real.is_dir() else search_model_dir


@pytest.fixture(scope="module")
def encoder(model_dir):
    return SpladeEncoder.from_pretrained(str(model_dir))


@pytest.fixture
def sample(cluster, index_name, model_dir) -> list[tuple[str, float]]:
    """The README's sample in a fresh index, as the Quickstart builds it; returns the top 5 of
    ``splade-es search --json`` for TEXT."""
    env = {"SPLADE_ES_URL": cluster.url, "SPLADE_ES_MODEL": str(model_dir)}
    runner = CliRunner()
    sample_file = str(REPO_ROOT / "examples" / "sample.jsonl")
    for args in (
        ["create-index", "--index", index_name, "--replicas", "0"],
        ["ingest", "--index", index_name, "--input", sample_file],
        ["search", "--index", index_name, "--k", "5", "--json", TEXT],
    ):
        done = runner.invoke(cli, args, env=env)
        assert done.exit_code == 0, f"{args[0]}: {done.output}"
        if args[0] == "ingest":
            # ingest leaves refreshing to the index's interval; the search must see every document.
            cluster.client.indices.refresh(index=index_name)
    hits = [(h["id"], h["score"]) for h in json.loads(done.stdout)["hits"]]
    assert hits, "the sample has documents for the README's query"
    return hits


def _run(command: list[str], cwd: Path, timeout: int = 120) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    what = " ".join(c for c in command if len(c) < 200)  # not the Java classpath
    assert done.returncode == 0, f"{what}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def maven() -> str:
    java, mvn = shutil.which("java"), shutil.which("mvn")
    if not java or not mvn:
        pytest.skip("java and mvn are needed to compile the README's Java examples (not installed)")
    return mvn


@pytest.fixture(scope="module")
def node_modules() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed for the README's Node.js examples (not installed)")
    if not (NODE_DIR / "node_modules").is_dir():
        _run([npm, "ci", "--no-audit", "--no-fund"], NODE_DIR, timeout=600)
    return NODE_DIR / "node_modules"


def test_the_readme_has_one_java_example_per_client_and_node_examples():
    java = readme_blocks("java")
    assert any("org.opensearch.client.RestClient;" in code for code in java)
    assert any(".withJson(" in code and "co.elastic.clients" in code for code in java)
    assert any(".generic()" in code and "org.opensearch.client.opensearch" in code for code in java)
    node = readme_blocks("js")
    assert any("@elastic/elasticsearch" in code for code in node)
    assert any("@opensearch-project/opensearch" in code for code in node)


def test_readme_java_examples_compile_and_print_what_search_prints(
    cluster, index_name, encoder, sample, maven, tmp_path
):
    project = tmp_path / "java"
    sources = project / "src" / "main" / "java"
    sources.mkdir(parents=True)
    shutil.copy(JAVA_PROJECT / "pom.xml", project / "pom.xml")
    with (
        running_proxy(cluster.url, encoder) as proxy,
        StubServer(forward_to(cluster.url, plain_json=True)) as gate,
        running_proxy(gate.url, encoder) as es_proxy,
    ):
        programs = []
        for code in readme_blocks("java"):
            name = re.search(r"public class (\w+)", code).group(1)
            url = es_proxy.state.url if "co.elastic.clients" in code else proxy.state.url
            programs.append((name, for_test(code, url, index_name)))
            if "org.opensearch.client.RestClient;" in code:
                variant = programs[-1][1].replace(name, "Elasticsearch" + name)
                for old, new in ES_LOW_LEVEL_IMPORTS.items():
                    variant = variant.replace(old, new)
                programs.append(("Elasticsearch" + name, variant))
        for name, code in programs:
            (sources / f"{name}.java").write_text(code, encoding="utf-8")
        _run(
            [
                maven,
                "-B",
                "-q",
                "-Dstyle.color=never",
                "compile",
                "dependency:build-classpath",
                "-Dmdep.outputFile=classpath.txt",
            ],
            project,
            timeout=600,
        )
        classpath = os.pathsep.join(
            [str(project / "target" / "classes"), (project / "classpath.txt").read_text().strip()]
        )
        for name, _ in programs:
            printed = top_hits(_run(["java", "-cp", classpath, name], project))
            assert_same_hits(printed, sample)
    assert len(programs) == 4


def test_readme_node_examples_print_what_search_prints(
    cluster, index_name, encoder, sample, node_modules, tmp_path
):
    (tmp_path / "node_modules").symlink_to(node_modules)
    blocks = readme_blocks("js")
    with (
        running_proxy(cluster.url, encoder) as proxy,
        StubServer(forward_to(cluster.url, plain_json=True)) as gate,
        running_proxy(gate.url, encoder) as es_proxy,
    ):
        for i, code in enumerate(blocks):
            url = es_proxy.state.url if "@elastic/elasticsearch" in code else proxy.state.url
            script = tmp_path / f"example{i}.mjs"
            script.write_text(for_test(code, url, index_name), encoding="utf-8")
            printed = top_hits(_run(["node", str(script)], tmp_path))
            assert_same_hits(printed, sample)
    assert len(blocks) == 2
