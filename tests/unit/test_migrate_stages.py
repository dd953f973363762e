"""The stages ``migrate`` composes (splade_es.migrate.stages), each alone, against the fake
cluster of tests/unit/test_migrate_sync.py (per-shard sequence numbers, write blocks) grown
the index, alias, count and mget calls the stages make. The ingestion pipeline is replaced by
test_migrate_sync's ``Copier``, which writes each record with a ``vector_of`` field."""

from __future__ import annotations

from typing import Any

import elasticsearch
import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig

from splade_es.exceptions import ClusterError, ConfigurationError
from splade_es.ingest import IngestConfig, IngestReport
from splade_es.migrate import stages
from splade_es.migrate.config import Gate, MigrationConfig
from splade_es.migrate.gate import GateResult, GateRow, gate_queries, gate_runs, judge
from splade_es.migrate.stages import (
    Copied,
    FinalPass,
    Migration,
    alias_notes,
    catch_up_passes,
    copy_source,
    create_target,
    final_pass,
    first_watermarks,
    ingest_config,
    lift_stale_write_block,
    may_switch,
    outcome_notes,
    plan_migration,
    switch_notes,
    target_exists,
    wants_switch,
)
from splade_es.migrate.state import MigrationState, StateFile
from splade_es.migrate.sync import SyncPass, lift_is_retryable, lift_write_block
from splade_es.migrate.verify import Verification, field_mismatches, shards_written_since
from tests.unit.test_migrate_sync import DIALECT, Copier, FakeCluster, FakeIndices

SPARSE = "vector_of"  # the field test_migrate_sync's Copier adds


class Indices(FakeIndices):
    """FakeIndices plus the index and alias calls of planning, creating and switching."""

    def exists(self, index: str) -> bool:
        return index in self.cluster.indices_

    def exists_alias(self, name: str) -> bool:
        return any(name in names for names in self.cluster.aliases.values())

    def get_alias(self, name: str) -> dict[str, Any]:
        return {i: {"aliases": {name: {}}} for i, a in self.cluster.aliases.items() if name in a}

    def update_aliases(self, body: dict[str, Any]) -> dict[str, Any]:
        self.cluster.calls.append(("update_aliases", ""))
        for action in body["actions"]:
            ((kind, target),) = action.items()
            names = self.cluster.aliases.setdefault(target["index"], set())
            (names.add if kind == "add" else names.discard)(target["alias"])
        return {"acknowledged": True}

    def get(self, index: str) -> dict[str, Any]:
        settings = {"index": {"number_of_shards": "2", "uuid": "generated", "creation_date": "1"}}
        return {index: {"settings": settings, "mappings": {"properties": {"text": {}}}}}

    def create(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        self.cluster.create(index)
        self.cluster.bodies[index] = body
        return {"acknowledged": True}


class Cluster(FakeCluster):
    def __init__(self) -> None:
        super().__init__()
        self.indices = Indices(self)
        self.aliases: dict[str, set[str]] = {}
        self.bodies: dict[str, dict[str, Any]] = {}

    def count(self, index: str) -> dict[str, int]:
        return {"count": len(self.indices_[index].docs)}

    def mget(self, index: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
        """By ``docs`` (verification) or ``ids`` (a resumed copy skipping what is there)."""
        held = self.indices_[index].docs
        ids = body.get("ids") or [d["_id"] for d in body["docs"]]
        docs = []
        for doc_id in ids:
            doc: dict[str, Any] = {"_id": doc_id, "found": doc_id in held}
            if doc_id in held and params.get("_source") is not False:
                doc["_source"] = dict(held[doc_id][1])
            docs.append(doc)
        return {"docs": docs}


class FakeIngest:
    """Stands in for ``ingest``: copies records into ``config.index`` (``Copier``), one call
    a pass, and remembers each call's config."""

    def __init__(self, cluster: Cluster, refuse: set[str] = frozenset()) -> None:
        self.cluster, self.refuse = cluster, refuse
        self.configs: list[IngestConfig] = []

    def __call__(self, client, records, *, encoder, config, progress=None) -> IngestReport:
        self.configs.append(config)
        copier = Copier(self.cluster, config.index, refuse=self.refuse)
        return copier(records, len(self.configs))


@pytest.fixture
def cluster() -> Cluster:
    """``src`` (2 shards, 20 documents) behind alias ``docs``; no target yet."""
    cluster = Cluster()
    source = cluster.create("src")
    for i in range(20):
        source.write(f"d{i}", {"text": f"text {i}"})
    cluster.aliases["src"] = {"docs"}
    return cluster


def make_config(**changes: Any) -> MigrationConfig:
    options: dict[str, Any] = {
        "source": "src",
        "target": "dst",
        "alias": "docs",
        "sparse_field": SPARSE,
        "field_type": "rank_features",
        **changes,
    }
    return MigrationConfig(**options)


def make_job(cluster: Cluster, steps: list[str] | None = None, **changes: Any) -> Migration:
    step = steps.append if steps is not None else (lambda message: None)
    return Migration(cluster, DIALECT, make_config(**changes), encoder=None, step=step)


def states_of(tmp_path, **fields: Any) -> StateFile:
    states = StateFile(tmp_path / "state.json", MigrationState(source="src", target="dst"))
    if fields:
        states.update(**fields)
    return states


def copied_cluster(cluster: Cluster) -> Cluster:
    """``dst`` holds every document of ``src``, as after the bulk copy."""
    target = cluster.create("dst")
    for doc_id, (_, src) in cluster.indices_["src"].docs.items():
        target.write(doc_id, {**src, SPARSE: src["text"]})
    return cluster


def a_pass(number: int, *, changed: int = 0, deleted: int = 0, refused: int = 0) -> SyncPass:
    return SyncPass(number, changed, deleted, refused, missing=refused, seconds=0.1)


VERIFIED = Verification(3, 3, (), (), 3, ())


# ---------------------------------------------------------------------- plan
def test_plan_reads_the_alias_opens_the_state_and_notes_a_foreign_alias(cluster, tmp_path):
    MigrationState(source="src", target="dst", phase="copied", indexed=7).save(tmp_path / "s")
    plan = plan_migration(make_job(cluster, checkpoint=str(tmp_path / "s")))
    assert plan.alias_before == ("src",) and plan.notes == ()
    assert (plan.states.state.phase, plan.states.state.indexed) == ("copied", 7)

    cluster.aliases = {"other": {"docs"}}
    assert plan_migration(make_job(cluster)).notes == ("alias docs pointed at other",)
    assert alias_notes(make_config(), ("dst",)) == ()  # a resumed run's own switch
    assert alias_notes(make_config(), ()) == ()


def test_plan_refuses_a_missing_source_before_reading_the_state(cluster, tmp_path):
    (tmp_path / "s").write_text("not json")
    del cluster.indices_["src"]
    with pytest.raises(ConfigurationError, match="source index 'src' does not exist"):
        plan_migration(make_job(cluster, checkpoint=str(tmp_path / "s")))


def test_a_write_block_a_killed_run_left_is_lifted_and_forgotten(cluster, tmp_path):
    cluster.indices_["src"].blocked = True
    states = states_of(tmp_path, write_block=True)
    steps: list[str] = []
    lift_stale_write_block(make_job(cluster, steps), states)
    assert not cluster.indices_["src"].blocked
    assert MigrationState.load(tmp_path / "state.json").write_block is False
    assert steps == ["lifting the write block a stopped migration left on src"]

    cluster.calls.clear()
    lift_stale_write_block(make_job(cluster), states)  # nothing recorded: nothing lifted
    assert cluster.calls == []


# ---------------------------------------------------------------------- create, watermarks, copy
def test_create_target_copies_settings_and_mapping_and_restarts_the_state(cluster, tmp_path):
    states = states_of(tmp_path, phase="copied", indexed=5, watermarks={0: 3})
    job = make_job(cluster)
    assert not target_exists(job)
    create_target(job, states)
    assert target_exists(job)
    body = cluster.bodies["dst"]
    assert body["mappings"]["properties"]["text"] == {}
    assert body["mappings"]["properties"][SPARSE] == {"type": "rank_features"}
    assert "uuid" not in body["settings"]["index"]  # generated: not copied
    assert body["settings"]["index"]["number_of_shards"] == "2"
    assert MigrationState.load(tmp_path / "state.json") == MigrationState(
        source="src", target="dst", phase="copying"
    )


def test_first_watermarks_saved_then_everything_when_resuming_then_now(cluster, tmp_path):
    job = make_job(cluster)
    saved = states_of(tmp_path, watermarks={0: 4, 1: 2})
    cluster.calls.clear()
    assert first_watermarks(job, saved, resuming=True) == {0: 4, 1: 2}
    assert cluster.calls == []  # read from the state file, not the cluster

    resumed = states_of(tmp_path)
    assert first_watermarks(job, resumed, resuming=True) == {0: -1, 1: -1}
    assert MigrationState.load(tmp_path / "state.json").watermarks == {0: -1, 1: -1}

    fresh = states_of(tmp_path)
    source = cluster.indices_["src"]
    assert first_watermarks(job, fresh, resuming=False) == {0: source.seq[0], 1: source.seq[1]}
    assert cluster.calls[-1] == ("refresh", "src")  # after the checkpoints: reader sees them


def test_copy_source_copies_everything_and_records_the_counts(cluster, tmp_path, monkeypatch):
    fake = FakeIngest(cluster, refuse={"d3"})
    monkeypatch.setattr(stages, "ingest", fake)
    cluster.create("dst")
    states = states_of(tmp_path, phase="copying", watermarks={0: 1, 1: 1})
    steps: list[str] = []
    copied = copy_source(make_job(cluster, steps), states, resuming=False)
    assert copied.report is not None
    assert (copied.report.indexed, copied.report.dead_lettered, copied.skipped_existing) == (
        19,
        1,
        0,
    )
    assert set(cluster.indices_["dst"].docs) == {f"d{i}" for i in range(20)} - {"d3"}
    assert steps == ["copying src -> dst"]
    saved = MigrationState.load(tmp_path / "state.json")
    assert (saved.phase, saved.indexed, saved.dead_lettered) == ("copied", 19, 1)
    assert saved.watermarks == {0: 1, 1: 1}  # kept
    # Copied already: a resumed run does not copy again.
    assert copy_source(make_job(cluster), states, resuming=True) == Copied(None)
    assert len(fake.configs) == 1


def test_a_resumed_copy_skips_what_the_target_holds_and_retries_dead_letters(
    cluster, tmp_path, monkeypatch
):
    fake = FakeIngest(cluster)
    monkeypatch.setattr(stages, "ingest", fake)
    target = cluster.create("dst")
    for i in range(5):
        target.write(f"d{i}", {"text": f"text {i}", SPARSE: "x"})
    dead = tmp_path / "dead.jsonl"
    dead.write_text('{"_id": "d9"}\n')
    job = make_job(cluster, dead_letter=str(dead))
    copied = copy_source(job, states_of(tmp_path, phase="copying"), resuming=True)
    assert copied.skipped_existing == 5 and copied.report and copied.report.indexed == 15
    assert not dead.exists()  # every unindexed document is attempted again
    assert fake.configs[0].dead_letter == str(dead) and fake.configs[0].id_field == "_id"


def test_ingest_config_gives_each_catch_up_pass_a_dead_letter_file_of_its_own():
    config = make_config(dead_letter="/x/dead.jsonl", batch_size=7, workers=3)
    assert ingest_config(config).dead_letter == "/x/dead.jsonl"
    assert ingest_config(config, 2).dead_letter == "/x/dead.pass2.jsonl"
    assert ingest_config(make_config(), 2).dead_letter is None
    settings = ingest_config(config)
    assert (settings.index, settings.batch_size, settings.workers) == ("dst", 7, 3)
    assert (settings.sparse_field, settings.add_id_field) == (SPARSE, False)
    assert settings.input_name == "index:src"


# ---------------------------------------------------------------------- catch up
def test_catch_up_passes_stop_below_max_delta_and_save_each_pass_watermarks(
    cluster, tmp_path, monkeypatch
):
    monkeypatch.setattr(stages, "ingest", FakeIngest(cluster))
    copied_cluster(cluster)
    source = cluster.indices_["src"]
    states = states_of(tmp_path, watermarks=dict(enumerate(source.seq)))
    for i in range(5):
        source.write(f"d{i}", {"text": f"updated {i}"})
    steps: list[str] = []
    passes, converged = catch_up_passes(make_job(cluster, steps, max_delta=3), states)
    assert converged and [(p.number, p.changed) for p in passes] == [(1, 5), (2, 0)]
    assert steps[0].startswith("catch-up pass 1: 5 changed, 0 deleted, 0 refused, 0 still")
    assert MigrationState.load(tmp_path / "state.json").watermarks == dict(enumerate(source.seq))


def test_catch_up_passes_give_up_after_max_passes_when_writes_keep_coming(
    cluster, tmp_path, monkeypatch
):
    monkeypatch.setattr(stages, "ingest", FakeIngest(cluster))
    copied_cluster(cluster)
    source = cluster.indices_["src"]
    states = states_of(tmp_path, watermarks=dict(enumerate(source.seq)))
    real_catch_up = stages.catch_up

    def writes_meanwhile(*args: Any, **kwargs: Any) -> Any:  # the application, every pass
        for i in range(3):
            source.write(f"d{i}", {"text": f"again {kwargs['number']}"})
        return real_catch_up(*args, **kwargs)

    monkeypatch.setattr(stages, "catch_up", writes_meanwhile)
    passes, converged = catch_up_passes(make_job(cluster, max_delta=1, max_passes=3), states)
    assert not converged and [p.changed for p in passes] == [3, 3, 3]


# ---------------------------------------------------------------------- final pass, switch
def test_final_pass_under_write_block_records_the_block_then_switches(
    cluster, tmp_path, monkeypatch
):
    monkeypatch.setattr(stages, "ingest", FakeIngest(cluster))
    copied_cluster(cluster)
    source = cluster.indices_["src"]
    states = states_of(tmp_path, watermarks=dict(enumerate(source.seq)))
    seen: list[bool] = []
    monkeypatch.setattr(  # what the state file says while the final pass runs
        stages,
        "read_max_seq_nos",
        lambda client, index: (
            seen.append(MigrationState.load(tmp_path / "state.json").write_block)
            or dict(enumerate(cluster.indices_[index].seq))
        ),
    )
    steps: list[str] = []
    done = final_pass(make_job(cluster, steps), states, [a_pass(1)], want_switch=True)
    assert seen[0] is True and source.blocked is False
    assert MigrationState.load(tmp_path / "state.json").write_block is False
    assert done.switched and done.alias_after == ("dst",) and cluster.aliases["src"] == set()
    assert done.sync.number == 2 and done.sync.under_write_block
    assert done.verification.ok and done.blocked_seconds is not None
    assert not done.blocked_before
    assert steps[0] == "writes to src blocked for the final pass and the switch"
    assert "switching alias docs -> dst" in steps and steps[-1].startswith("writes to src unb")


def test_final_pass_without_switch_or_block_leaves_the_alias(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "ingest", FakeIngest(cluster))
    copied_cluster(cluster)
    states = states_of(tmp_path, watermarks={0: -1, 1: -1})
    done = final_pass(make_job(cluster), states, [], want_switch=False)
    assert not done.switched and done.blocked_seconds is None
    assert ("add_block", "src") not in cluster.calls and cluster.aliases["src"] == {"docs"}
    assert done.sync.changed == 20 and done.verification.ok

    steps: list[str] = []
    job = make_job(cluster, steps, write_block=False)
    done = final_pass(job, states, [], want_switch=True)
    assert done.switched and ("add_block", "src") not in cluster.calls
    assert "switching alias docs -> dst (no write block)" in steps


def test_a_refused_document_or_failed_verification_keeps_the_alias(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "ingest", FakeIngest(cluster, refuse={"d1"}))
    copied_cluster(cluster)
    cluster.indices_["src"].write("d1", {"text": "refused by the target"})
    states = states_of(tmp_path, watermarks=dict(enumerate(cluster.indices_["src"].seq)))
    cluster.indices_["src"].write("d1", {"text": "refused again"})
    done = final_pass(make_job(cluster), states, [a_pass(1)], want_switch=True)
    assert done.sync.refused == 1 and not done.switched and cluster.aliases["src"] == {"docs"}

    assert may_switch(True, VERIFIED, [a_pass(1)])
    assert not may_switch(False, VERIFIED, [a_pass(1)])
    assert not may_switch(True, VERIFIED, [a_pass(1, refused=1), a_pass(2)])
    assert not may_switch(True, Verification(3, 2, ("x",), (), 2, ()), [a_pass(1)])


def test_an_index_blocked_before_stays_blocked_and_is_noted(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "ingest", FakeIngest(cluster))
    copied_cluster(cluster)
    cluster.indices_["src"].blocked = True
    states = states_of(tmp_path, watermarks=dict(enumerate(cluster.indices_["src"].seq)))
    done = final_pass(make_job(cluster), states, [], want_switch=True)
    assert done.blocked_before and done.blocked_seconds is None and done.switched
    assert cluster.indices_["src"].blocked
    notes = outcome_notes(
        make_config(switch=True, gate=GATE), PASSED, [done.sync], done, converged=True
    )
    assert notes == ["src was write-blocked before the migration; left so"]


# ---------------------------------------------------------------------- the report's notes
GATE = Gate(queries={"q": "text"}, min_overlap=0.5)
PASSED = GateResult((), True, "ok")
FAILED = GateResult((), False, "no")


def final(switched: bool = False, verification: Verification = VERIFIED, **more: Any) -> FinalPass:
    return FinalPass(a_pass(3), verification, ("dst",) if switched else None, **more)


def test_notes_say_why_the_alias_was_not_switched():
    switching = make_config(switch=True, gate=GATE)
    unverified = Verification(3, 2, ("d1",), (), 2, ())
    assert switch_notes(make_config(), None, final()) == [
        "dry run: alias left as it was (use --switch)"
    ]
    assert switch_notes(switching, PASSED, final(switched=True)) == []
    assert switch_notes(switching, PASSED, final(verification=unverified)) == [
        "alias not switched: verification failed"
    ]
    assert switch_notes(switching, FAILED, final()) == [
        "alias not switched: the relevance gate did not pass"
    ]
    assert wants_switch(switching, PASSED) and not wants_switch(switching, FAILED)
    assert not wants_switch(make_config(gate=GATE), PASSED)


def test_notes_in_order_non_convergence_refusals_late_writes_then_the_switch():
    config = make_config(switch=True, gate=GATE, max_passes=2, max_delta=4)
    written = Verification(3, 3, (), (), 3, (), written_after=(0, 1))
    passes = [a_pass(1, refused=2), a_pass(2, refused=1), a_pass(3)]
    notes = outcome_notes(config, PASSED, passes, final(verification=written), converged=False)
    assert notes == [
        "writes kept coming: 2 catch-up passes did not converge below 4 changes; the final "
        "pass took the rest",
        "3 documents were refused during the catch-up passes (see the .passN dead-letter "
        "files); alias not switched",
        "src was written after the final pass (shards 0, 1): without a write block those "
        "writes can be missing from the target",
    ]
    dry = outcome_notes(make_config(), None, passes, final(), converged=True)
    assert dry == [
        "3 documents were refused during the catch-up passes (see the .passN dead-letter files)",
        "dry run: alias left as it was (use --switch)",
    ]


# ---------------------------------------------------------------------- gate, verify parts
def row(label: str, **metrics: float) -> GateRow:
    return GateRow(label, "i", metrics, {}, 0)


def test_the_gate_judges_the_best_new_run_by_ndcg_gain_or_splade_overlap():
    judged = Gate(queries={"a": "x", "b": "y"}, qrels={"a": {"d": 1}}, min_ndcg_gain=0.05)
    rows = (
        row("old", **{"ndcg@10": 0.4, "overlap@10": 1.0}),
        row("splade", **{"ndcg@10": 0.42, "overlap@10": 0.3}),
        row("hybrid", **{"ndcg@10": 0.46, "overlap@10": 0.6}),
    )
    result = judge(rows, judged)
    assert result.passed and result.reason.startswith("nDCG@10 hybrid 0.4600 vs old 0.4000")
    assert not judge(rows[:2], judged).passed  # gain 0.02 < 0.05
    unjudged = Gate(queries={"a": "x"}, min_overlap=0.5)
    result = judge(rows, unjudged)  # SPLADE's overlap alone (0.3), not the hybrid's
    assert not result.passed and result.reason == "overlap@10 of SPLADE with BM25 0.300 < 0.5"
    assert gate_queries(judged) == {"a": "x"} and gate_queries(unjudged) == {"a": "x"}
    runs = gate_runs("s", "t", judged)
    assert [(r.index, r.mode) for r in runs] == [("s", "bm25"), ("t", "splade"), ("t", "hybrid")]
    assert runs[2].label == "hybrid 0.5 BM25 (new)"


def test_verification_parts_moved_shards_and_field_mismatches():
    assert shards_written_since({0: 5, 1: 7}, {0: 5, 1: 8, 2: 0}) == (1, 2)
    originals = [{"_id": "a", "t": 1}, {"_id": "b", "t": 2}, {"_id": "c", "t": 3}]
    copies = {"a": {"t": 1, SPARSE: {}}, "b": {"t": 9, "u": 0}}
    assert field_mismatches(originals, copies, sparse_field=SPARSE) == (
        ("b", "t"),
        ("b", "u"),
        ("b", SPARSE),
    )  # c has no copy: the id comparison counts it


# ---------------------------------------------------------------------- lifting the block
def api_error(status: int) -> elasticsearch.ApiError:
    node = NodeConfig("http", "localhost", 9200)
    meta = ApiResponseMeta(status, "1.1", HttpHeaders(), 0.0, node)
    return elasticsearch.ApiError(f"status {status}", meta=meta, body={})


def wrapped(cause: BaseException) -> ClusterError:
    """What ``connect.call`` raises for a client error."""
    try:
        raise ClusterError("lifting the write block on src: ...") from cause
    except ClusterError as exc:
        return exc


def test_lifting_retries_only_what_is_retryable():
    assert lift_is_retryable(wrapped(api_error(503)))
    assert lift_is_retryable(wrapped(api_error(429)))
    assert lift_is_retryable(ConnectionResetError())
    assert not lift_is_retryable(wrapped(api_error(400)))
    assert not lift_is_retryable(ValueError("a bug"))


def test_a_lift_refused_for_good_is_tried_once_and_says_how_to_lift_it(cluster):
    tries = []

    class Refusing:
        def remove_write_block(self, client: Any, index: str) -> None:
            tries.append(index)
            raise wrapped(api_error(400))

    with pytest.raises(ClusterError, match=r"src still refuses writes.*index\.blocks\.write"):
        lift_write_block(cluster, "src", dialect=Refusing(), attempts=5)  # type: ignore[arg-type]
    assert tries == ["src"]
