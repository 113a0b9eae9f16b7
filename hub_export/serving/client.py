"""Client-side helpers for a module served by TF Serving: request bodies and replies.

Nothing here opens a connection. The functions build what a client sends and read what
the server answers, for both of TF Serving's APIs:

* REST, `POST /v1/models/<name>:predict`: `rest_body` builds the JSON body (row form,
  `"instances"`, or column form, `"inputs"`), `parse_rest_reply` reads the reply
  (`"predictions"` or `"outputs"`) into numpy arrays.
* gRPC, `PredictionService.Predict`: `predict_request` builds the `PredictRequest`,
  `parse_predict_response` reads the `PredictResponse`.

`rest_body_to_feeds` applies the server's REST decoding rules to a body, giving the
arrays TF Serving would feed the signature (or the error it would refuse the body
with), so that a body can be checked without a server; `request_feeds` gives the arrays
a gRPC request carries. The tests feed both to the session-based loader the server uses.

Sentences go to the `default` signature (or its alias `serving_default`); tokens go to
`tokens`, with each row padded with "" to the longest and `sequence_len` (int32) the
row's real length.
"""

from __future__ import annotations

import base64
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

import signatures
from hub_export.errors import InputError, ServingReplyError

ROW_FORM = "instances"
COLUMN_FORM = "inputs"
FORMS = (ROW_FORM, COLUMN_FORM)

SENTENCE_SIGNATURES = (signatures.default.NAME, *signatures.default.ALIASES)
TOKEN_SIGNATURES = (signatures.tokens.NAME, *signatures.tokens.ALIASES)
SEQUENCE_LEN = "sequence_len"
PAD = ""


# Inputs: validation shared by the REST and the gRPC builders (and hub_export.serving.warmup).

def split_sentence(sentence: str) -> list[str]:
    """The tokens the `default` signature makes of `sentence`: split on single spaces,
    empty pieces dropped."""
    return [piece for piece in sentence.split(" ") if piece]


def check_sentences(sentences: Any, what: str = "sentences") -> list[str]:
    """A non-empty list of str, or InputError naming the offending element."""
    if isinstance(sentences, (str, bytes)) or not isinstance(sentences, Sequence):
        raise InputError(f"{what}: expected a list of strings, got {type(sentences).__name__}")
    if not sentences:
        raise InputError(f"{what}: empty; give at least one sentence")
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise InputError(f"{what}[{i}]: expected a str, got {type(sentence).__name__} "
                             f"{sentence!r}")
    return list(sentences)


def pad_tokens(tokens: Any, what: str = "tokens") -> tuple[list[list[str]], list[int]]:
    """Rows of str tokens -> (rows padded with "" to the longest, real length per row)."""
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise InputError(f"{what}: expected a list of token lists, got {type(tokens).__name__}")
    if not tokens:
        raise InputError(f"{what}: empty; give at least one row of tokens")
    rows = []
    for i, row in enumerate(tokens):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise InputError(f"{what}[{i}]: expected a list of str tokens, got "
                             f"{type(row).__name__} {row!r}")
        for j, token in enumerate(row):
            if not isinstance(token, str):
                raise InputError(f"{what}[{i}][{j}]: expected a str token, got "
                                 f"{type(token).__name__} {token!r}")
        rows.append(list(row))
    lengths = [len(row) for row in rows]
    width = max(lengths)
    return [row + [PAD] * (width - len(row)) for row in rows], lengths


def _pick(sentences: Any, tokens: Any, signature: str | None) -> str:
    """Checks that exactly one input kind is given and `signature` takes it."""
    if (sentences is None) == (tokens is None):
        raise InputError("give exactly one of sentences= (for the `default` signature) or "
                         "tokens= (for the `tokens` signature), "
                         + ("not both" if sentences is not None else "got neither"))
    allowed = SENTENCE_SIGNATURES if sentences is not None else TOKEN_SIGNATURES
    if signature is None:
        return allowed[0]
    if signature not in allowed:
        kind = "sentences" if sentences is not None else "tokens"
        raise InputError(f"signature: {signature!r} does not take {kind}; use one of "
                         f"{', '.join(repr(s) for s in allowed)}")
    return signature


# REST.

def rest_body(sentences: Sequence[str] | None = None,
              tokens: Sequence[Sequence[str]] | None = None,
              signature: str | None = None, form: str = ROW_FORM) -> dict:
    """The JSON body of a REST `:predict` call.

    Args:
        sentences: list of str, for the `default` signature (or `serving_default`).
        tokens: list of lists of str, for the `tokens` signature; rows may differ in
            length (they are padded with "").
        signature: the signature name; default `default` for sentences, `tokens` for
            tokens.
        form: "instances" (row form) or "inputs" (column form).

    Returns:
        A dict for `json.dumps`, e.g. `{"signature_name": "default", "instances":
        ["a b", "c"]}` or `{"signature_name": "tokens", "inputs": {"tokens": [["a", "b"],
        ["c", ""]], "sequence_len": [2, 1]}}`.
    """
    if form not in FORMS:
        raise InputError(f"form: {form!r} is not one of {', '.join(repr(f) for f in FORMS)}")
    signature = _pick(sentences, tokens, signature)
    body: dict[str, Any] = {"signature_name": signature}
    if sentences is not None:
        sentences = check_sentences(sentences)
        key = next(iter(signatures.default.INPUT_SPECS))
        # Row form: the signature's single input may be given as bare values.
        body[form] = sentences if form == ROW_FORM else {key: sentences}
        return body
    rows, lengths = pad_tokens(tokens)
    if form == ROW_FORM:
        body[form] = [{"tokens": row, SEQUENCE_LEN: n} for row, n in zip(rows, lengths)]
    else:
        body[form] = {"tokens": rows, SEQUENCE_LEN: lengths}
    return body


def _input_dtype(spec: Any) -> tf.DType:
    """A TensorSpec, a TensorInfo (SignatureDef), a tf.DType, an enum int or a name."""
    dtype = getattr(spec, "dtype", spec)
    try:
        return tf.as_dtype(dtype)
    except TypeError as e:
        raise InputError(f"signature_inputs: cannot read a dtype from {spec!r}") from e


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _shape_of(value: Any, where: str) -> tuple[int, ...]:
    """The shape of a nested JSON list; InputError if it is ragged."""
    if not isinstance(value, list):
        return ()
    if not value:
        return (0,)
    inner = [_shape_of(v, f"{where}[{i}]") for i, v in enumerate(value)]
    for i, shape in enumerate(inner[1:], start=1):
        if shape != inner[0]:
            raise InputError(f"{where}: ragged; element 0 has shape {list(inner[0])}, element "
                             f"{i} has shape {list(shape)} (pad rows to the same length)")
    return (len(value), *inner[0])


def _flatten(value: Any) -> list:
    if not isinstance(value, list):
        return [value]
    return [leaf for v in value for leaf in _flatten(v)]


def _leaf(value: Any, dtype: tf.DType, where: str) -> Any:
    """One JSON scalar as TF Serving reads it for `dtype`."""
    if dtype == tf.string:
        if _is_b64(value):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (ValueError, TypeError) as e:
                raise InputError(f"{where}: invalid base64 in {value!r}") from e
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value.encode("utf-8")
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {value!r}")
        return value
    if dtype.is_integer:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: expected an integer ({dtype.name}), got "
                             f"{type(value).__name__} {value!r}")
        if not dtype.min <= value <= dtype.max:
            raise InputError(f"{where}: {value} is out of range for {dtype.name}")
        return value
    if dtype.is_floating:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: expected a number ({dtype.name}), got "
                             f"{type(value).__name__} {value!r}")
        return value
    raise InputError(f"{where}: inputs of dtype {dtype.name} are not supported here")


def _to_array(value: Any, dtype: tf.DType, where: str) -> np.ndarray:
    """A JSON value (nested lists of scalars) -> numpy array of `dtype`."""
    shape = _shape_of(value, where)
    leaves = [] if 0 in shape else [_leaf(v, dtype, where) for v in _flatten(value)]
    np_dtype = object if dtype == tf.string else dtype.as_numpy_dtype
    array = np.empty(len(leaves), dtype=np_dtype)
    array[:] = leaves
    return array.reshape(shape)


def _stack(arrays: list[np.ndarray], where: str) -> np.ndarray:
    for i, a in enumerate(arrays[1:], start=1):
        if a.shape != arrays[0].shape:
            raise InputError(f"{where}: instance 0 has shape {list(arrays[0].shape)}, instance "
                             f"{i} has shape {list(a.shape)}; every instance must have the same "
                             "shape (pad token rows to the same length)")
    return np.stack(arrays)


def rest_body_to_feeds(body: Mapping[str, Any], signature_inputs: Mapping[str, Any]
                       ) -> dict[str, np.ndarray]:
    """What TF Serving feeds a signature for a REST `:predict` body.

    The server's documented rules: the body holds exactly one of `instances` (row form)
    or `inputs` (column form). Row form: a list of instances, each either a dict of
    input name -> value or, when the signature has a single input, a bare value;
    instances are stacked along a new batch axis. Column form: a dict of input name ->
    value, or a bare value for a single-input signature; values are taken as they are.
    A string may be written as `{"b64": "<base64>"}`. Every input of the signature must
    be given, and no other.

    Args:
        body: the decoded JSON body.
        signature_inputs: input name -> its dtype, as a tf.TensorSpec, a SignatureDef's
            TensorInfo, a tf.DType or a dtype name.

    Returns:
        Input name -> array: strings as object arrays of bytes, numbers in the
        signature's dtype (int32 for `sequence_len`).
    """
    if not isinstance(body, Mapping):
        raise InputError(f"body: expected a JSON object, got {type(body).__name__}")
    dtypes = {name: _input_dtype(spec) for name, spec in signature_inputs.items()}
    if not dtypes:
        raise InputError("signature_inputs: empty")
    present = [form for form in FORMS if form in body]
    if len(present) != 1:
        raise InputError('body: must hold exactly one of "instances" (row form) or "inputs" '
                         f'(column form); it holds {present or "neither"}')
    form = present[0]
    value = body[form]
    names = sorted(dtypes)
    single = names[0] if len(names) == 1 else None

    def check_keys(keys, where: str) -> None:
        missing = sorted(set(dtypes) - set(keys))
        extra = sorted(set(keys) - set(dtypes))
        if missing or extra:
            raise InputError(f"{where}: the signature's inputs are {names}; "
                             + "; ".join(p for p in (f"missing {missing}" if missing else "",
                                                     f"unknown {extra}" if extra else "") if p))

    if form == COLUMN_FORM:
        if isinstance(value, dict) and not _is_b64(value):
            check_keys(value, "inputs")
            return {k: _to_array(v, dtypes[k], f"inputs[{k!r}]") for k, v in value.items()}
        if single is None:
            raise InputError(f"inputs: a bare value needs a single-input signature; this one "
                             f"takes {names}, so give a dict of them")
        return {single: _to_array(value, dtypes[single], "inputs")}

    if not isinstance(value, list):
        raise InputError(f"instances: expected a list, got {type(value).__name__}")
    if not value:
        raise InputError("instances: empty; give at least one instance")
    named = [isinstance(v, dict) and not _is_b64(v) for v in value]
    if any(named) and not all(named):
        raise InputError("instances: mixes named (JSON object) and bare instances; use one")
    if not named[0]:
        if single is None:
            raise InputError(f"instances: bare values need a single-input signature; this one "
                             f"takes {names}, so give each instance as an object of them")
        return {single: _stack([_to_array(v, dtypes[single], f"instances[{i}]")
                                for i, v in enumerate(value)], "instances")}
    for i, instance in enumerate(value):
        check_keys(instance, f"instances[{i}]")
    return {k: _stack([_to_array(inst[k], dtypes[k], f"instances[{i}][{k!r}]")
                       for i, inst in enumerate(value)], f"instances[*][{k!r}]")
            for k in names}


def _output_array(name: str, value: Any, where: str) -> np.ndarray:
    """A reply value -> numpy: int32 for `sequence_len`, float32 for numbers, strings kept."""
    shape = _shape_of(value, where)
    leaves = [] if 0 in shape else _flatten(value)
    if name == SEQUENCE_LEN:
        dtype = tf.int32
    elif leaves and all(isinstance(v, str) or _is_b64(v) for v in leaves):
        dtype = tf.string
    else:
        dtype = tf.float32
    if dtype == tf.float32:
        for v in leaves:
            # TF Serving writes non-finite floats as NaN / Infinity, which json reads as floats.
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ServingReplyError(f"{where}: expected numbers, got {type(v).__name__} {v!r}")
        array = np.asarray(leaves, dtype=np.float32)
        return array.reshape(shape)
    try:
        return _to_array(value, dtype, where)
    except InputError as e:
        raise ServingReplyError(str(e)) from e


def parse_rest_reply(reply: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A REST `:predict` reply -> output name -> numpy array.

    TF Serving answers a row-form request with `{"predictions": [...]}`: one entry per
    example, a dict of output name -> value when the signature has several outputs (as
    this module's do). A column-form request gets `{"outputs": {name: value}}`. A bare
    value (single-output signature) comes back under the key "predictions" or "outputs".
    Float outputs come back as float32, `sequence_len` as int32.

    Raises:
        ServingReplyError: the reply is `{"error": ...}` or not shaped like either form.
    """
    if not isinstance(reply, Mapping):
        raise ServingReplyError(f"reply: expected a JSON object, got {type(reply).__name__}")
    if "error" in reply:
        raise ServingReplyError(f"reply: TF Serving returned an error: {reply['error']}")
    present = [key for key in ("predictions", "outputs") if key in reply]
    if len(present) != 1:
        raise ServingReplyError('reply: expected exactly one of "predictions" (row form) or '
                                f'"outputs" (column form); got keys {sorted(reply)}')
    key = present[0]
    value = reply[key]
    if key == "outputs":
        if isinstance(value, dict) and not _is_b64(value):
            return {k: _output_array(k, v, f"outputs[{k!r}]") for k, v in value.items()}
        return {key: _output_array(key, value, key)}
    if not isinstance(value, list):
        raise ServingReplyError(f"predictions: expected a list, got {type(value).__name__}")
    named = [isinstance(v, dict) and not _is_b64(v) for v in value]
    if not value or not all(named):
        if any(named):
            raise ServingReplyError("predictions: mixes per-example objects and bare values")
        return {key: _output_array(key, value, key)}
    names = list(value[0])
    for i, example in enumerate(value):
        if set(example) != set(names):
            raise ServingReplyError(f"predictions[{i}]: outputs {sorted(example)} differ from "
                                    f"predictions[0]'s {sorted(names)}")
    out = {}
    for name in names:
        rows = [_output_array(name, example[name], f"predictions[{i}][{name!r}]")
                for i, example in enumerate(value)]
        try:
            out[name] = _stack(rows, f"predictions[*][{name!r}]")
        except InputError as e:
            raise ServingReplyError(str(e)) from e
    return out


# gRPC.

def predict_request(sentences: Sequence[str] | None = None,
                    tokens: Sequence[Sequence[str]] | None = None,
                    signature: str | None = None, model_name: str = "elmo"
                    ) -> predict_pb2.PredictRequest:
    """A gRPC `PredictRequest` for sentences (`default`) or tokens (`tokens`).

    Strings go as DT_STRING; `sequence_len` as DT_INT32, which the signature requires (a
    numpy int array would default to int64 and be rejected).
    """
    signature = _pick(sentences, tokens, signature)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if sentences is not None:
        sentences = check_sentences(sentences)
        key = next(iter(signatures.default.INPUT_SPECS))
        request.inputs[key].CopyFrom(
            tf.make_tensor_proto([s.encode("utf-8") for s in sentences], dtype=tf.string,
                                 shape=[len(sentences)]))
        return request
    rows, lengths = pad_tokens(tokens)
    width = len(rows[0])
    flat = [token.encode("utf-8") for row in rows for token in row]
    request.inputs["tokens"].CopyFrom(
        tf.make_tensor_proto(flat, dtype=tf.string, shape=[len(rows), width]))
    request.inputs[SEQUENCE_LEN].CopyFrom(
        tf.make_tensor_proto(np.asarray(lengths, dtype=np.int32), dtype=tf.int32,
                             shape=[len(lengths)]))
    return request


def parse_predict_response(response: Any) -> dict[str, np.ndarray]:
    """A gRPC `PredictResponse` -> output name -> numpy array (float32, int32 as served)."""
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def request_feeds(request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
    """The arrays a `PredictRequest` carries, input name -> numpy (strings as bytes)."""
    return {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}


__all__ = [
    "COLUMN_FORM", "ROW_FORM", "ServingReplyError", "check_sentences", "pad_tokens",
    "parse_predict_response", "parse_rest_reply", "predict_request", "request_feeds",
    "rest_body", "rest_body_to_feeds", "split_sentence",
]
