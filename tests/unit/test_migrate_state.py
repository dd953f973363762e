"""The migration state file (splade_es.migrate.state): typed, versioned, saved atomically,
and able to read the files the untyped code wrote (version 0, tests/data/*-v0*.json, written
by that code's ``_save_state``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from splade_es.exceptions import ConfigurationError
from splade_es.migrate.state import STATE_VERSION, MigrationState, StateFile

DATA = Path(__file__).resolve().parents[1] / "data"


def test_a_version_0_file_after_the_copy_with_the_block_held_reads_field_by_field() -> None:
    state = MigrationState.load(DATA / "migration-state-v0.json")
    assert state == MigrationState(
        source="docs-bm25",
        target="docs-splade",
        version=0,
        phase="copied",
        indexed=1187,
        dead_lettered=3,
        skipped_existing=250,
        watermarks={0: 611, 1: 598, 2: -1},
        write_block=True,
    )
    assert all(isinstance(shard, int) for shard in state.watermarks or {})


def test_a_version_0_file_written_mid_copy_reads_with_the_defaults() -> None:
    state = MigrationState.load(DATA / "migration-state-v0-copying.json")
    assert state == MigrationState(
        source="docs-bm25",
        target="docs-splade",
        version=0,
        phase="copying",
        watermarks={0: 12, 1: 40},
    )
    assert (state.indexed, state.dead_lettered, state.skipped_existing) == (0, 0, 0)
    assert state.write_block is False


def test_save_then_load_gives_the_same_state_in_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = MigrationState(
        source="a",
        target="b",
        phase="copied",
        indexed=5,
        dead_lettered=1,
        skipped_existing=2,
        watermarks={3: 9, 0: -1},
        write_block=True,
    )
    state.save(path)
    assert MigrationState.load(path) == state
    saved = json.loads(path.read_text())
    assert saved["version"] == STATE_VERSION == 1
    assert saved["watermarks"] == {"0": -1, "3": 9}  # JSON keys are strings
    assert saved["write_block"] is True  # what test_migrate_live reads after a kill
    assert not (tmp_path / "state.json.tmp").exists()
    # A state without watermarks round-trips too.
    bare = MigrationState(source="a", target="b")
    bare.save(path)
    assert MigrationState.load(path) == bare


def test_a_changed_version_0_state_is_saved_as_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    shutil.copy(DATA / "migration-state-v0.json", path)
    states = StateFile.open(path, source="docs-bm25", target="docs-splade")
    states.update(write_block=False)
    again = MigrationState.load(path)
    assert (again.version, again.write_block, again.indexed) == (STATE_VERSION, False, 1187)
    assert again.watermarks == {0: 611, 1: 598, 2: -1}


def test_a_newer_version_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "future.json"
    path.write_text(json.dumps({"version": STATE_VERSION + 1, "source": "a", "target": "b"}))
    with pytest.raises(ConfigurationError, match=r"future\.json: migration state version 2 is"):
        MigrationState.load(path)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('{"source": "a", "target": ', "Expecting value"),  # cut short by a full disk
        ("[1, 2]", "not a JSON object"),
        ('{"target": "b"}', "source: expected str, got None"),
        ('{"source": "a", "target": "b", "indexed": "12"}', "indexed: expected int, got '12'"),
        ('{"source": "a", "target": "b", "indexed": true}', "indexed: expected int, got True"),
        ('{"source": "a", "target": "b", "phase": "done"}', "unknown phase 'done'"),
        ('{"source": "a", "target": "b", "watermarks": {"x": 1}}', "watermarks"),
        ('{"source": "a", "target": "b", "watermarks": [1]}', "watermarks"),
        ('{"source": "a", "target": "b", "version": "1"}', "version: expected int, got '1'"),
    ],
)
def test_a_corrupt_file_is_a_configuration_error_naming_it(
    tmp_path: Path, content: str, why: str
) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=r"broken\.json is not a readable") as caught:
        MigrationState.load(path)
    assert why in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"broken\.json"):
        StateFile.open(path, source="a", target="b")


def test_a_state_file_of_another_migration_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    MigrationState(source="a", target="b").save(path)
    with pytest.raises(ConfigurationError, match="belongs to another migration"):
        StateFile.open(path, source="a", target="c")


def test_every_update_is_saved_and_restart_forgets_all_but_the_names(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    states = StateFile.open(path, source="a", target="b")
    assert states.state == MigrationState(source="a", target="b") and not path.exists()
    states.update(phase="copied", indexed=4, watermarks={0: 3})
    assert MigrationState.load(path) == states.state
    states.restart(phase="copying")
    assert MigrationState.load(path) == MigrationState(source="a", target="b", phase="copying")


def test_without_a_path_the_state_lives_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a stray relative write would land here
    states = StateFile.open(None, source="a", target="b")
    assert states.update(indexed=2).indexed == 2
    assert list(tmp_path.iterdir()) == []
