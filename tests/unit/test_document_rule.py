"""``documents.read_document``: the one rule for a record's id, text and refusal, and the
scale-out rows read through it (``scaleout.row_records``, Spark's ``encode_frames``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from splade_es.documents import Document, content_id, read_document
from splade_es.exceptions import InputError
from splade_es.ingest.sources import Record, prepare
from splade_es.scaleout import plain_row, row_records

FIELDS = ("title", "text")


def read(doc, **options):
    return read_document(
        doc, id_field=options.pop("id_field", "_id"), text_fields=FIELDS, position=3, **options
    )


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"_id": "a", "title": "Tax", "text": "code"}, Document("a", "Tax code")),
        ({"_id": "a", "title": "  Tax \n", "text": "\t code  "}, Document("a", "Tax code")),
        ({"_id": "a", "title": None, "text": "code"}, Document("a", "code")),
        ({"_id": "a", "text": "code"}, Document("a", "code")),
        ({"_id": "a", "title": "   ", "text": "code"}, Document("a", "code")),
        ({"_id": 7, "title": "x"}, Document("7", "x")),
        ({"_id": "a", "title": "x", "other": 5}, Document("a", "x")),  # not a text field
    ],
)
def test_good_records_get_their_id_and_stripped_text(doc, expected):
    assert read(doc) == expected


@pytest.mark.parametrize(
    ("doc", "field", "doc_id", "problem"),
    [
        ([1, 2], None, None, "expected a JSON object, got list"),
        ("text", None, None, "expected a JSON object, got str"),
        ({"title": "x"}, "_id", None, "missing id field '_id'"),
        ({"_id": None, "title": "x"}, "_id", None, "missing id field '_id'"),
        ({"_id": "  ", "title": "x"}, "_id", None, "missing id field '_id'"),
        ({"_id": True, "title": "x"}, "_id", None, "id field '_id' is bool, expected string or "),
        ({"_id": 1.5, "title": "x"}, "_id", None, "id field '_id' is float, expected string or "),
        ({"_id": "a", "title": 42, "text": "x"}, "title", "a", "field 'title' is int, expected"),
        ({"_id": "a", "title": ["x"]}, "title", "a", "field 'title' is list, expected text"),
        ({"_id": "a", "text": {"x": 1}}, "text", "a", "field 'text' is dict, expected text"),
        ({"_id": "a", "title": True}, "title", "a", "field 'title' is bool, expected text"),
        ({"_id": "a", "title": "", "text": " "}, "title", "a", "no text in field(s) 'title', "),
        ({"_id": "a", "title": None, "text": None}, "title", "a", "no text in field(s)"),
        ({"_id": "a"}, "title", "a", "no text in field(s) 'title', 'text'"),
        # the id is checked first: a record wrong twice is refused for its id
        ({"title": 42}, "_id", None, "missing id field '_id'"),
    ],
)
def test_bad_records_are_refused_with_where_field_id_and_problem(doc, field, doc_id, problem):
    with pytest.raises(InputError) as refused:
        read(doc)
    assert str(refused.value).startswith(f"record 3: {problem}")
    assert (refused.value.position, refused.value.field, refused.value.doc_id) == (3, field, doc_id)


def test_where_and_unit_only_change_the_location():
    doc = {"_id": "a", "title": 5}
    messages = []
    for options in ({"unit": "line"}, {"where": "document [a] (bulk item 2)"}):
        with pytest.raises(InputError) as refused:
            read(doc, **options)
        messages.append(str(refused.value))
    assert messages == [
        "line 3: field 'title' is int, expected text",
        "document [a] (bulk item 2): field 'title' is int, expected text",
    ]


def test_without_an_id_field_the_id_is_the_content_hash():
    doc = {"title": "x", "text": "y"}
    assert read(doc, id_field=None) == Document(content_id(doc), "x y")


def test_the_sparse_field_is_refused_only_when_asked_and_after_the_id():
    doc = {"_id": "a", "title": "x", "splade": {"t": 1.0}}
    assert read(doc) == Document("a", "x")
    with pytest.raises(InputError) as refused:
        read(doc, sparse_field="splade")
    assert (refused.value.field, refused.value.doc_id) == ("splade", "a")


def test_prepare_is_the_rule_plus_the_stored_fields():
    doc = {"_id": "a", "title": "  x ", "lang": "en"}
    prepared = prepare(Record(4, doc), id_field="_id", text_fields=FIELDS)
    source = {"title": "  x ", "lang": "en", "id": "a"}  # stored as sent, no metadata field
    assert (prepared.doc_id, prepared.text, prepared.source) == ("a", "x", source)
    with pytest.raises(InputError, match=r"^record 4: field 'title' is int"):
        prepare(Record(4, {"_id": "a", "title": 1}), id_field="_id", text_fields=FIELDS)


# ---------------------------------------------------------------------- scale-out rows
def test_plain_rows_are_python_values_without_nulls():
    row = {"a": np.int64(4), "b": np.float64("nan"), "c": None, "d": np.array([1, 2]), "e": "x"}
    assert plain_row(row) == {"a": 4, "d": [1, 2], "e": "x"}
    assert type(plain_row(row)["a"]) is int  # so a refusal says "is int", as ingest does


def test_json_rows_are_read_as_ingest_reads_a_line():
    rows = [
        {"value": json.dumps({"_id": "a", "title": 5})},
        {"value": "   "},  # a blank line is no record, as in a JSONL file
        {"value": "[1]"},
        {"value": "{broken"},
        {"value": None},
    ]
    records = list(row_records(rows, json_field="value", unit="partition 2 row"))
    assert [r.position for r in records] == [1, 3, 4, 5]
    assert records[0].doc == {"_id": "a", "title": 5} and records[0].unit == "partition 2 row"
    assert records[1].error == "partition 2 row 3: expected a JSON object, got list"
    assert records[2].error.startswith("partition 2 row 4: invalid JSON")
    assert records[3].error == "partition 2 row 5: field 'value' is NoneType, expected a JSON text"
    assert [r.raw for r in records[1:]] == ["[1]", "{broken", None]


def test_spark_encode_frames_follows_the_rule(tiny_bert_dir):
    from splade_es.encoding.encoder import SpladeEncoder
    from splade_es.spark import encode_frames
    from splade_es.tokens import TokenCodec
    from tests.vectors import assert_same_vector

    frame = pd.DataFrame(
        {
            "_id": ["a", "b", None, "d"],
            "title": ["  tax  ", None, "x", "y"],
            "text": ["code", "garlic", "z", 5],
        }
    )
    [out] = encode_frames(
        iter([frame]), model=str(tiny_bert_dir), text_cols=list(FIELDS), id_col="_id"
    )
    assert list(out["splade_error"]) == [
        None,
        None,
        "row 3: missing id field '_id'",
        "row 4: field 'text' is int, expected text",
    ]
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir))
    want = encoder.encode_documents(["tax code", "garlic"])
    codec = TokenCodec(encoder.vocab)
    for i in range(2):
        assert_same_vector(out["splade"][i], codec.encode(want, i))
    assert out["splade"][2] is None and out["splade"][3] is None
