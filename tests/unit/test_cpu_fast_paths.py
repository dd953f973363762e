"""``SPLADE_ES_CPU_FAST_PATHS``: the switch that lets one machine test both kinds of CPU."""

from __future__ import annotations

import pytest

from splade_es import SpladeEncoder
from splade_es.encoding.encoder import FAST_PATHS_ENV, _cpu_has_fast_bf16
from splade_es.exceptions import ConfigurationError
from tests.vectors import assert_same_vectors

TEXTS = ["tax code section", "garlic powder ounce tablespoon " * 20, "a"]


def load(model_dir, monkeypatch, mode: str | None) -> SpladeEncoder:
    if mode is None:
        monkeypatch.delenv(FAST_PATHS_ENV, raising=False)
    else:
        monkeypatch.setenv(FAST_PATHS_ENV, mode)
    return SpladeEncoder.from_pretrained(str(model_dir), device="cpu")


def test_off_takes_the_plain_paths(tiny_model_dir, monkeypatch):
    encoder = load(tiny_model_dir, monkeypatch, "off")
    assert encoder.fast_forward is None and not encoder.head.screen


def test_on_screens_on_any_cpu(tiny_model_dir, monkeypatch):
    encoder = load(tiny_model_dir, monkeypatch, "on")
    assert encoder.head.screen and encoder.fast_forward is not None


def test_auto_follows_the_cpu(tiny_model_dir, monkeypatch):
    encoder = load(tiny_model_dir, monkeypatch, None)
    assert encoder.head.screen == _cpu_has_fast_bf16()


def test_an_explicit_screen_argument_wins(tiny_model_dir, monkeypatch):
    monkeypatch.setenv(FAST_PATHS_ENV, "off")
    encoder = SpladeEncoder.from_pretrained(str(tiny_model_dir), device="cpu", screen=True)
    assert encoder.head.screen


def test_every_setting_gives_the_same_vectors(tiny_model_dir, monkeypatch):
    vectors = {
        mode: load(tiny_model_dir, monkeypatch, mode).encode_documents(TEXTS).to_dicts()
        for mode in ("off", "on", "auto")
    }
    assert_same_vectors(vectors["on"], vectors["off"])
    assert_same_vectors(vectors["auto"], vectors["off"])


def test_a_bad_value_is_a_configuration_error(tiny_model_dir, monkeypatch):
    monkeypatch.setenv(FAST_PATHS_ENV, "fast")
    with pytest.raises(ConfigurationError, match="SPLADE_ES_CPU_FAST_PATHS='fast'"):
        SpladeEncoder.from_pretrained(str(tiny_model_dir), device="cpu")
