"""The wire shapes between Elasticsearch's inference services and serve's embed endpoint,
re-read from Elasticsearch's sources (we cannot run Elasticsearch here).

Sources, in elastic/elasticsearch ``x-pack/plugin/inference/src/main/java/org/elasticsearch/
xpack/inference/`` (the custom service as released in 8.19.0 / 9.1.0; its transport versions
``INFERENCE_CUSTOM_SERVICE_ADDED_8_19``, ``ML_INFERENCE_CUSTOM_SERVICE_REMOVE_ERROR_PARSING_8_19``
mark the 8.19 backport; the field names are those of elasticsearch-specification branches 8.19
and 9.1, ``specification/inference/_types/CommonTypes.ts`` ``CustomServiceSettings``):

* ``services/custom/request/CustomRequest.java``: the body is ``service_settings.request``
  with placeholders replaced from the JSON-serialized parameters (secret parameters, task
  settings, then the request's own: ``input``); headers and URL from the plain-string ones.
* ``services/custom/request/RequestParameters.java``: ``input`` is ``JsonUtils.toJson(inputs)``,
  an XContent JSON array of the strings.
* ``common/ValidatingSubstitutor.java``: commons-text ``StringSubstitutor`` with ``${`` / ``}``,
  then any ``${...}`` left in the result is an error.
* ``common/MapPathExtractor.java``: ``$`` then ``.field`` / ``[*]`` steps; a missing field is
  an error; ``[*]`` maps the rest of the path over a list, keeping each item's list (not
  flattening as JSONPath does) and dropping null results.
* ``services/custom/response/SparseEmbeddingResponseParser.java``: ``token_path`` and
  ``weight_path`` each give one list per input; per input the two lists must have equal
  sizes; a token is taken as ``toString()``, a weight must be a number.
* ``services/huggingface/request/HuggingFaceInferenceRequestEntity.java``: ``{"inputs": [...]}``;
  ``services/huggingface/response/HuggingFaceElserResponseEntity.java``: the answer is a JSON
  array with one object per input, each field a token and each value a number
  (``VALUE_NUMBER``), in input order.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from splade_es.register.elasticsearch import (
    REQUEST_TEMPLATE,
    TOKEN_PATH,
    WEIGHT_PATH,
    endpoint_body,
)

VECTORS = [{"tax": 1.5, "law": 0.25, "%2E": 0.125}, {}, {"1996": 2.0}]
TEXTS = ['tax "law"', " ", "año\n1996"]


# ------------------------------------------------------------------ re-readings of the rules
_PLACEHOLDER = re.compile(r"\$\{(.*?)\}")


def substitute(source: str, params: dict[str, str], depth: int = 0) -> str:
    """commons-text ``StringSubstitutor.replace`` with prefix ``${`` and suffix ``}``: known
    variables replaced, and (its default) variables inside a replaced value replaced too;
    unknown ones left as they are. (Checked by running commons-text 1.12.0's
    ``StringSubstitutor`` on ``{"inputs": ${input}}`` with an input holding ``${api_key}``.)"""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params or depth > 8:
            return match.group(0)
        return substitute(params[name], params, depth + 1)

    return _PLACEHOLDER.sub(one, source)


def validating_replace(source: str, params: dict[str, str]) -> str:
    """``ValidatingSubstitutor.replace``: substitute, then refuse any placeholder left."""
    replaced = substitute(source, params)
    left = re.search(r"\$\{.*?\}", replaced)
    if left:
        raise ValueError(f"Found placeholder [{left.group(0)}] after replacement call")
    return replaced


def custom_request(
    settings: dict[str, Any], secrets: dict[str, str], inputs: list[str]
) -> tuple[dict[str, str], str]:
    """``CustomRequest``: the headers and the body the ``custom`` service sends for ``inputs``."""
    string_params = dict(secrets)
    json_params = {k: json.dumps(v) for k, v in secrets.items()}
    json_params["input"] = json.dumps(
        inputs, ensure_ascii=False
    )  # RequestParameters.jsonParameters
    json_params["input_type"] = json.dumps("")  # EmbeddingParameters: no translation -> default
    headers = {"Content-Type": "application/json"}
    headers.update(
        {k: validating_replace(v, string_params) for k, v in settings["headers"].items()}
    )
    return headers, validating_replace(settings["request"], json_params)


def extract(data: Any, path: str) -> Any:
    """``MapPathExtractor.extract``."""
    if not path.strip().startswith("$"):
        raise ValueError(f"Path [{path}] must start with a dollar sign ($)")
    return _navigate(data, path.strip()[1:])


def _navigate(current: Any, rest: str) -> Any:
    if current is None or not rest:
        return current
    field = re.fullmatch(r"\.([^.\[]+)(.*)", rest, re.DOTALL)
    if field:
        if not isinstance(current, dict):
            raise ValueError(f"Current path [{rest}] matched a field but the object is not a map")
        if current.get(field.group(1)) is None:
            raise ValueError(f"Unable to find field [{field.group(1)}] in map")
        return _navigate(current[field.group(1)], field.group(2))
    wildcard = re.fullmatch(r"\[\*\](.*)", rest, re.DOTALL)
    if wildcard:
        if not isinstance(current, list):
            raise ValueError(f"Current path [{rest}] matched [*] but the object is not a list")
        results = [_navigate(item, wildcard.group(1)) for item in current]
        return [r for r in results if r is not None]
    raise ValueError(f"Invalid path received [{rest}], unable to extract a field name.")


def sparse_embeddings(
    answer: dict[str, Any], token_path: str, weight_path: str
) -> list[list[tuple[str, float]]]:
    """``SparseEmbeddingResponseParser.transform``: per input, (token, weight) pairs."""
    tokens, weights = extract(answer, token_path), extract(answer, weight_path)
    if not isinstance(tokens, list) or not isinstance(weights, list) or len(tokens) != len(weights):
        raise ValueError("the extracted token and weight lists differ in size")
    embeddings = []
    for token_list, weight_list in zip(tokens, weights, strict=True):
        if len(token_list) != len(weight_list):
            raise ValueError("an entry's token and weight lists differ in size")
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weight_list):
            raise ValueError("a weight is not a number")
        embeddings.append(
            [(str(t), float(w)) for t, w in zip(token_list, weight_list, strict=True)]
        )
    return embeddings


def hugging_face_sparse(text: str) -> list[list[tuple[str, float]]]:
    """``HuggingFaceElserResponseEntity.fromResponse``: a JSON array of objects whose values
    are numbers; anything else is a parse error."""
    answer = json.loads(text)
    if not isinstance(answer, list):
        raise ValueError("expected a JSON array")
    embeddings = []
    for item in answer:
        if not isinstance(item, dict):
            raise ValueError("expected START_OBJECT")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item.values()):
            raise ValueError("expected VALUE_NUMBER")
        embeddings.append([(k, float(v)) for k, v in item.items()])
    return embeddings


def pairs_answer(vectors: list[dict[str, float]]) -> dict[str, Any]:
    """serve's ``format=pairs`` answer, as the contract (issue 23) spells it."""
    return {
        "embeddings": [
            {"embedding": [{"token": k, "weight": w} for k, w in v.items()]} for v in vectors
        ]
    }


# ------------------------------------------------------------------ the custom service
def test_the_custom_template_sends_the_contracts_body_and_bearer_header():
    settings = endpoint_body("http://serve:9280", "document", "k-1", custom=True)[
        "service_settings"
    ]
    assert settings["request"] == REQUEST_TEMPLATE
    headers, body = custom_request(settings, {"api_key": "k-1"}, TEXTS)
    # ${input} expands to the JSON array of the texts, in order, escapes and all.
    assert json.loads(body) == {"inputs": TEXTS}
    assert headers["Authorization"] == "Bearer k-1"
    assert "k-1" not in body


def test_the_custom_service_refuses_a_text_that_holds_a_placeholder():
    # A hazard of the custom service, not of serve: texts go through the substitutor too. One
    # holding ${...} that names nothing fails the request; one naming a parameter gets it
    # substituted (commons-text substitutes inside values). The hugging_face service has no
    # templates.
    settings = endpoint_body("http://serve:9280", "query", "k-1", custom=True)["service_settings"]
    with pytest.raises(ValueError, match=r"Found placeholder \[\$\{x\}\]"):
        custom_request(settings, {"api_key": "k-1"}, ["cost ${x}"])
    _, body = custom_request(settings, {"api_key": "k-1"}, ["${api_key}"])
    assert '"k-1"' in body


def test_the_pairs_answer_parses_into_each_inputs_tokens_and_weights():
    parsed = sparse_embeddings(pairs_answer(VECTORS), TOKEN_PATH, WEIGHT_PATH)
    assert [dict(e) for e in parsed] == VECTORS  # one per input, in order; empty stays empty
    assert len(parsed) == len(TEXTS)


def test_the_paths_keep_one_list_per_input_unlike_plain_jsonpath():
    answer = pairs_answer([{"a": 1.0, "b": 2.0}, {"c": 3.0}])
    assert extract(answer, TOKEN_PATH) == [["a", "b"], ["c"]]
    assert extract(answer, WEIGHT_PATH) == [[1.0, 2.0], [3.0]]
    with pytest.raises(ValueError, match="Unable to find field"):
        extract({"data": []}, TOKEN_PATH)
    with pytest.raises(ValueError, match="dollar"):
        extract(answer, TOKEN_PATH[1:])


def test_a_token_id_key_is_read_as_its_string():
    # key_scheme=id answers decimal ids; the parser takes token.toString().
    parsed = sparse_embeddings(pairs_answer([{"2001": 0.5}]), TOKEN_PATH, WEIGHT_PATH)
    assert parsed == [[("2001", 0.5)]]
    ids_as_numbers = {"embeddings": [{"embedding": [{"token": 2001, "weight": 0.5}]}]}
    assert sparse_embeddings(ids_as_numbers, TOKEN_PATH, WEIGHT_PATH) == [[("2001", 0.5)]]


def test_a_weight_that_is_not_a_number_is_refused():
    answer = {"embeddings": [{"embedding": [{"token": "a", "weight": "1"}]}]}
    with pytest.raises(ValueError, match="not a number"):
        sparse_embeddings(answer, TOKEN_PATH, WEIGHT_PATH)


# ------------------------------------------------------------------ the hugging_face service
def test_the_hugging_face_service_reads_the_maps_answer():
    settings = endpoint_body("http://serve:9280", "document", "k-1", custom=False)[
        "service_settings"
    ]
    assert settings["url"] == "http://serve:9280/_splade/embed/document"  # format=maps, the default
    request = {"inputs": TEXTS}  # HuggingFaceInferenceRequestEntity
    assert json.loads(json.dumps(request)) == {"inputs": TEXTS}
    parsed = hugging_face_sparse(json.dumps(VECTORS))
    assert [dict(e) for e in parsed] == VECTORS


@pytest.mark.parametrize(
    "answer", ['{"tax": 1.0}', '[{"tax": "1.0"}]', '[{"tax": {"w": 1}}]', "[[1.0]]"]
)
def test_the_hugging_face_parser_refuses_other_shapes(answer):
    with pytest.raises(ValueError):
        hugging_face_sparse(answer)


# ------------------------------------------------------------------ serve's own answers
def test_serves_answers_parse_as_elasticsearch_reads_them():
    embed = pytest.importorskip("splade_es.serve.embed")
    answer_body = getattr(embed, "answer_body", None)
    if answer_body is None:
        pytest.skip("serve's embed module has no answer_body")
    pairs = json.loads(json.dumps(answer_body(VECTORS, "pairs")))
    assert [dict(e) for e in sparse_embeddings(pairs, TOKEN_PATH, WEIGHT_PATH)] == VECTORS
    maps = json.dumps(answer_body(VECTORS, "maps"))
    assert [dict(e) for e in hugging_face_sparse(maps)] == VECTORS
