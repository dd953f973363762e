"""``POST /_splade/embed/<kind>``, the encoder the engines call: what a request asks for and
the shapes of the answer. Pure (no IO, no model): ``routes.py`` reads the request, encodes the
texts this module says need encoding, and writes what it builds.

The request: ``{"inputs": [str, ...]}`` (or one ``str``), with ``format`` (``maps``, the
default, or ``pairs``) and ``key_scheme`` (``token``, the default, or ``id``) in the body or the
query string. A blank text is answered with an empty vector, never an error: an engine sends
a whole batch of documents at once, and one 400 would fail every one of them.

``"passages": true`` (``/_splade/embed/document`` only, in the body or the query string):
per input, its passages instead of one vector, one per window of its text, as a write
through ``serve --enrich`` to an index whose sparse field holds passages gets them (serve's
``--window``, ``--overlap``, ``--max-windows``): ``maps`` answers ``[[{"vector": {key: weight},
"start": s, "end": e}, ...], ...]`` (``start``/``end``: the window's characters in the input,
end exclusive), ``pairs`` ``{"embeddings": [{"passages": [{"embedding": [{"token": key,
"weight": w}, ...], "start": s, "end": e}, ...]}, ...]}``; a blank input has no passage.

>>> request = parse_embed_request({"inputs": ["tax law", " "]}, [("format", "pairs")])
>>> request.format, request.key_scheme, request.to_encode
('pairs', 'token', [0])
>>> answer_body(request.vectors([{"tax": 1.5}]), request.format)
{'embeddings': [{'embedding': [{'token': 'tax', 'weight': 1.5}]}, {'embedding': []}]}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..defaults import PASSAGE_END, PASSAGE_START, PASSAGE_VECTOR
from ..exceptions import InputError
from ..tokens import KeyScheme

Kind = Literal["document", "query"]
Format = Literal["maps", "pairs"]
Vector = Mapping[str, float]
Passage = Mapping[str, Any]  # {"vector": Vector, "start": int, "end": int} (defaults.PASSAGE_*)

KINDS: dict[str, Kind] = {"document": "document", "query": "query"}
FORMATS: dict[str, Format] = {"maps": "maps", "pairs": "pairs"}
KEY_SCHEMES: dict[str, KeyScheme] = {"token": "token", "id": "id"}


class EmbedRequestError(InputError):
    """An embed request that cannot be answered: answered 400 ``illegal_argument_exception``,
    naming the field (and the input's position) at fault."""


@dataclass(frozen=True)
class EmbedRequest:
    """One embed request, checked: its texts in order, and how to answer them."""

    texts: tuple[str, ...]
    format: Format = "maps"
    key_scheme: KeyScheme = "token"
    passages: bool = False  # per text, its passages (one vector per window)

    @property
    def to_encode(self) -> list[int]:
        """Positions of the texts the model must encode (the blank ones get ``{}``)."""
        return [i for i, text in enumerate(self.texts) if not is_blank(text)]

    def vectors(self, encoded: Sequence[Vector]) -> list[dict[str, float]]:
        """One vector per text, in order: ``encoded`` (one per ``to_encode`` position, in
        order) where a text was encoded, ``{}`` where it was blank."""
        positions = self.to_encode
        if len(encoded) != len(positions):
            raise ValueError(f"{len(positions)} texts to encode but {len(encoded)} vectors")
        out: list[dict[str, float]] = [{} for _ in self.texts]
        for position, vector in zip(positions, encoded, strict=True):
            out[position] = dict(vector)
        return out

    def passages_of(self, encoded: Sequence[Sequence[Passage]]) -> list[list[Passage]]:
        """``vectors`` for passages: one list per text, ``[]`` where it was blank.

        >>> EmbedRequest(("a b", " ")).passages_of([[{"vector": {"a": 1.0}, "start": 0, "end": 3}]])
        [[{'vector': {'a': 1.0}, 'start': 0, 'end': 3}], []]
        """
        positions = self.to_encode
        if len(encoded) != len(positions):
            raise ValueError(f"{len(positions)} texts to encode but {len(encoded)} passage lists")
        out: list[list[Passage]] = [[] for _ in self.texts]
        for position, passages in zip(positions, encoded, strict=True):
            out[position] = list(passages)
        return out


def is_blank(text: str) -> bool:
    """Whether ``text`` has nothing to encode (the encoders' own rule: ``not text.strip()``)."""
    return not text.strip()


def parse_embed_request(
    body: Mapping[str, Any], params: Iterable[tuple[str, str]] = ()
) -> EmbedRequest:
    """``body`` (a JSON object) and the query string's ``params`` as an ``EmbedRequest``;
    ``EmbedRequestError`` naming the field at fault."""
    given = list(params)
    return EmbedRequest(
        texts=inputs_of(body),
        format=_choice("format", FORMATS, body, given, "maps"),
        key_scheme=_choice("key_scheme", KEY_SCHEMES, body, given, "token"),
        passages=_flag("passages", body, given),
    )


def _flag(name: str, body: Mapping[str, Any], params: Sequence[tuple[str, str]]) -> bool:
    """A true/false option: a JSON boolean in the body, ``true``/``false`` in the query string
    (the two must agree); False when absent.

    >>> _flag("passages", {"passages": True}, []), _flag("passages", {}, [("passages", "true")])
    (True, True)
    """
    values = {value for key, value in params if key == name}
    if len(values) > 1:
        raise EmbedRequestError(
            f"[{name}] is given several values in the query string: {sorted(values)}", field=name
        )
    if values - {"true", "false"}:
        raise EmbedRequestError(
            f"[{name}] must be true or false, got {values.pop()!r} in the query string", field=name
        )
    flag = values.pop() == "true" if values else None
    if name in body:
        value = body[name]
        if not isinstance(value, bool):
            raise EmbedRequestError(
                f"[{name}] must be true or false, got {_shown(value)}", field=name
            )
        if flag is not None and flag != value:
            raise EmbedRequestError(
                f"[{name}] is {_shown(value)} in the body but {_shown(flag)} in the query string",
                field=name,
            )
        flag = value
    return bool(flag)


def inputs_of(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The request's texts: ``inputs``, a list of strings or one string."""
    if "inputs" not in body:
        raise EmbedRequestError('[inputs] is required: {"inputs": ["text", ...]}', field="inputs")
    inputs = body["inputs"]
    if isinstance(inputs, str):
        return (inputs,)
    if not isinstance(inputs, list):
        raise EmbedRequestError(
            f"[inputs] must be a list of strings or a string, got {_shown(inputs)}",
            field="inputs",
        )
    for position, text in enumerate(inputs):
        if not isinstance(text, str):
            raise EmbedRequestError(
                f"[inputs][{position}] must be a string, got {_shown(text)}",
                field="inputs",
                position=position,
            )
    return tuple(inputs)


def _choice(
    name: str,
    choices: Mapping[str, Any],
    body: Mapping[str, Any],
    params: Sequence[tuple[str, str]],
    default: str,
) -> Any:
    """The value of option ``name``, from the body or the query string (the two must agree),
    one of ``choices``."""
    values = {value for key, value in params if key == name}
    if len(values) > 1:
        raise EmbedRequestError(
            f"[{name}] is given several values in the query string: {sorted(values)}", field=name
        )
    if name in body:
        value = body[name]
        if not isinstance(value, str):
            raise EmbedRequestError(f"[{name}] must be a string, got {_shown(value)}", field=name)
        if values and values != {value}:
            raise EmbedRequestError(
                f"[{name}] is {value!r} in the body but {values.pop()!r} in the query string",
                field=name,
            )
        values = {value}
    value = values.pop() if values else default
    if value not in choices:
        raise EmbedRequestError(
            f"[{name}] must be one of {', '.join(choices)}, got {value!r}", field=name
        )
    return choices[value]


def _shown(value: Any) -> str:
    """A request's value as it came, shortened for a message."""
    return json.dumps(value)[:80]


def answer_body(vectors: Sequence[Vector], format: Format) -> Any:
    """The JSON answer for ``vectors`` (one per input, in order) in ``format``.

    ``maps``: ``[{key: weight, ...}, ...]``, what ml-commons' sparse encoding and
    Elasticsearch's ``hugging_face`` service read; ``pairs``: ``{"embeddings": [{"embedding":
    [{"token": key, "weight": weight}, ...]}, ...]}``, for a JSON-path parser (Elasticsearch's
    ``custom`` service).

    >>> answer_body([{"tax": 1.5}, {}], "maps")
    [{'tax': 1.5}, {}]
    """
    if format == "maps":
        return [dict(vector) for vector in vectors]
    return {"embeddings": [{"embedding": _pairs(vector)} for vector in vectors]}


def _pairs(vector: Vector) -> list[dict[str, Any]]:
    return [{"token": key, "weight": weight} for key, weight in vector.items()]


def passages_answer(passages: Sequence[Sequence[Passage]], format: Format) -> Any:
    """The JSON answer for passages (one list per input, in order) in ``format``: ``maps``,
    each input's list of ``{"vector", "start", "end"}`` as a passages index stores them;
    ``pairs``, each passage's vector as ``answer_body``'s pairs.

    >>> one = [[{"vector": {"tax": 1.5}, "start": 0, "end": 7}], []]
    >>> passages_answer(one, "maps")
    [[{'vector': {'tax': 1.5}, 'start': 0, 'end': 7}], []]
    >>> passages_answer(one, "pairs")["embeddings"][0]
    {'passages': [{'embedding': [{'token': 'tax', 'weight': 1.5}], 'start': 0, 'end': 7}]}
    """
    if format == "maps":
        return [[dict(passage) for passage in text] for text in passages]
    return {
        "embeddings": [
            {
                "passages": [
                    {
                        "embedding": _pairs(passage[PASSAGE_VECTOR]),
                        PASSAGE_START: passage[PASSAGE_START],
                        PASSAGE_END: passage[PASSAGE_END],
                    }
                    for passage in text
                ]
            }
            for text in passages
        ]
    }
