"""Sparse vectors as JSON, a window at a time: the bytes ``json.dumps`` writes for the feature
dicts of ``TokenCodec.encode``, with no Python object per weight.

``json.dumps`` writes a float as ``float.__repr__`` does: the shortest decimal that reads back
as the same double, the nearest one when several are as short (David Gay's ``dtoa``, mode 0).
At ~0.5 µs a call and ~300 weights a document, that was most of ingest's own time. Here the
same digits come from integer arithmetic over whole arrays. A float32 weight is exactly
``M * 2**E`` (``M < 2**24``); with ``k`` such that ``T = x * 10**k`` lies in
``[10**16, 10**17)``, ``T = M * 5**k / 2**s``: a 57-bit integer part and an ``s``-bit fraction,
exact in uint64. The doubles' rounding interval around ``x`` (half an ulp, ``2**(E - 30)``) is
``5**k / 2**(s + 30)`` in units of ``T``; the shortest decimal that reads back as ``x`` is the
nearest multiple of the largest ``10**j`` that lies in it, and its digits are ``T`` rounded to
``17 - j`` places. Weights written in fixed notation by ``repr`` (``1e-4 <= x < 1e16``; here
up to ``1e15``) take this path. The rest (exponent notation), powers of two (their interval is
lopsided) and exact ties (where ``dtoa`` breaks the tie) are written by ``repr`` itself, so the
output is byte for byte ``json.dumps``'s; ``tests/unit/test_vector_json.py`` compares them.
"""

from __future__ import annotations

import json
import sys
from json.encoder import encode_basestring  # type: ignore[attr-defined]

import numpy as np

from ..sparse import SparseBatch
from ..tokens import TokenCodec

__all__ = ["VectorJson", "weight_texts"]

SLICE_VALUES = 1 << 16  # weights written per step (bounds the scratch arrays to a few MB)
_NATIVE = sys.byteorder == "little"  # the words below are little-endian; else json.dumps
_U64 = np.uint64
_POW5 = np.array([5**k for k in range(21)], dtype=np.uint64)
_POW10_FROM = -8  # _POW10[i] = 10.0 ** (i + _POW10_FROM), exact for the positive powers
_POW10 = np.array([10.0**n for n in range(_POW10_FROM, 18)])
_POW10_INT = np.array([10**j for j in range(18)], dtype=np.uint64)
_ALL_ONES = _U64(2**64 - 1)  # -1: subtracting it adds 1
_TEN = _U64(10)


def _words(text: bytes, count: int = 3) -> np.ndarray:
    """``text`` NUL-padded to ``count`` little-endian 64-bit words."""
    return np.frombuffer(text.ljust(8 * count, b"\0"), dtype="<u8").astype(_U64)


# A weight's text and its "," are 3 words (24 bytes), NUL where they have nothing. The 17
# digits start at byte 3 (digit i at byte 3 + i); "ddd.ddd" keeps the digits before the point
# there, writes "." after them and moves the rest one byte on; "0.00ddd" moves the digits on
# by len("0.00") - 3 bytes and writes "0.00" before them; "," is byte 23.
_DIGITS4 = np.frombuffer(b"".join(b"%04d" % i for i in range(10_000)), "<u4").astype(_U64)
_BELOW = np.array([_words(bytes(3) + b"\xff" * n) for n in range(18)]).T.copy()  # digits < n
_POINTS = range(-3, 17)  # tables by point + 3
_DECOR = np.array(
    [_words(bytes(p == 0) + b"0." + b"0" * -p if p <= 0 else bytes(3 + p) + b".") for p in _POINTS]
).T.copy()
_SHIFT = np.array([8 * max(0, -p - 1) if p <= 0 else 8 for p in _POINTS], dtype=_U64)
_TRAIL = np.array([_words(bytes(4 + max(p, 0)) + b"0") for p in _POINTS]).T.copy()  # "12.0"
_COMMA = _words(bytes(23) + b",")
WEIGHT_WORDS = 3


def weight_texts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The text ``json.dumps`` writes for each float32 weight, then ",": (``WEIGHT_WORDS``
    64-bit words a weight, NUL bytes to drop; the number of the other bytes).

    >>> words, sizes = weight_texts(np.array([0.7, 1.5, 12.0, 3e-05], dtype=np.float32))
    >>> words.tobytes().translate(None, b"\\0"), sizes.tolist()
    (b'0.699999988079071,1.5,12.0,2.9999999242136255e-05,', [18, 4, 5, 23])
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    fast, digits, count, point = _shortest(values)
    words, sizes = _fixed_notation(digits, count, point)
    slow = np.flatnonzero(~fast)
    if slow.size:  # written by repr: 22 bytes at most
        written = [repr(x).encode() for x in values[slow].astype(np.float64).tolist()]
        padded = b"".join(text.ljust(23, b"\0") + b"," for text in written)
        words[slow] = np.frombuffer(padded, dtype="<u8").reshape(-1, 3)
        sizes[slow] = [len(text) + 1 for text in written]
    return words, sizes


def _shortest(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fast, digits, count, point): whether a weight takes the fast path and, for those, a
    17-digit integer whose first ``count`` digits are ``repr``'s, the decimal point after
    ``point`` of them (``point`` <= 0: that many zeros after "0.")."""
    bits = values.view(np.uint32)
    biased = (bits >> np.uint32(23)).astype(np.int64)  # with the sign bit: > 255, not fast
    fraction = bits & np.uint32(0x7FFFFF)
    guess = np.floor((biased - 127) * np.log10(2.0)).astype(np.int64)  # exponent10 or one less
    table = _POW10.take(np.clip(guess + 1 - _POW10_FROM, 0, len(_POW10) - 1))
    exp10 = guess + (values >= table)  # exact: a float32 is never between 10**n and its double
    k = np.clip(16 - exp10, 2, 20)  # T = x * 10**k = mantissa * 5**k / 2**s in [1e16, 1e17)
    s = 150 - biased - k
    fast = (biased >= 1) & (biased <= 254) & (fraction != 0) & (exp10 >= -4) & (exp10 <= 14)
    fast &= (s >= -30) & (s <= 32)
    mantissa = (fraction | np.uint32(0x800000)).astype(_U64)
    digits, dropped = _round_shortest(mantissa, k, np.clip(s, -30, 32))
    count = 17 - dropped
    point = 17 - k  # exp10 + 1
    carried = digits == _U64(10**17)  # 99..9.5 rounded up to 10**17: one digit, "1"
    digits[carried] = _U64(10**16)
    count[carried] = 1
    return fast, digits, count, point + carried


def _round_shortest(mantissa: np.ndarray, k: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, ...]:
    """(T rounded to the fewest places that read back as x, the places dropped)."""
    p5 = _POW5.take(k)
    high, low = (p5 >> _U64(32)) * mantissa, (p5 & _U64(0xFFFFFFFF)) * mantissa
    shift = np.maximum(s, 0).astype(_U64)
    widen = np.maximum(-s, 0).astype(_U64)
    whole = ((high << (_U64(32) - shift)) + (low >> shift)) << widen  # floor(T)
    part = low & ((_U64(1) << shift) - _U64(1))  # T - floor(T), in units of 2**-shift
    reach = p5 >> (_U64(30) - widen)  # half an ulp of x in the same units, floored
    # [first, last]: the integers (17-digit decimals) that read back as x. Places dropped: the
    # most trailing zeros of a number in it, i.e. divisions by ten that leave first - 1 and
    # last apart; the interval is < 23 wide: two or more places are rare, and leave one number.
    below = (whole - np.where(reach >= part, (reach - part) >> shift, _ALL_ONES) - _U64(1)) // _TEN
    above = (whole + ((reach + part) >> shift)) // _TEN
    one_place = above > below
    below, above = below // _TEN, above // _TEN
    dropped = one_place.astype(np.int64) + (above > below)
    more = np.flatnonzero(dropped == 2)
    below, above = below[more], above[more]
    for _ in range(14):
        below, above = below // _TEN, above // _TEN
        apart = above > below
        more, below, above = more[apart], below[apart], above[apart]
        if not more.size:
            break
        dropped[more] += 1
    # 0 or 1 place: the nearest candidate, a tie to the even one (as dtoa; both read back as
    # x); 2 or more: the one candidate
    ten = whole // _TEN
    tail = ((whole - ten * _TEN) << shift) + part  # beyond the tens, in units of 2**-shift
    half, five = (_U64(1) << shift) >> _U64(1), _U64(5) << shift
    up_ten = (tail > five) | ((tail == five) & (ten & _U64(1)).astype(bool))
    up_one = (part > half) | ((part == half) & (shift > 0) & (whole & _U64(1)).astype(bool))
    rounded = np.where(one_place, (ten + up_ten) * _TEN, whole + up_one)
    many = np.flatnonzero(dropped >= 2)
    unit = _POW10_INT.take(dropped[many])
    rounded[many] = (whole[many] + ((reach[many] + part[many]) >> shift[many])) // unit * unit
    return rounded, dropped


def _fixed_notation(
    digits: np.ndarray, count: np.ndarray, point: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``weight_texts`` of ``repr``'s fixed notation: "0.00ddd" (``point`` <= 0), "ddd.ddd",
    or "12.0" (no digit after the point)."""
    lead = digits // _U64(10**16)
    rest = digits - lead * _U64(10**16)
    groups = []
    for scale in (10**12, 10**8, 10**4):
        group = rest // _U64(scale)
        rest -= group * _U64(scale)
        groups.append(_DIGITS4.take(group))
    chars = (
        ((lead + _U64(ord("0"))) << _U64(24)) | (groups[0] << _U64(32)),
        groups[1] | (groups[2] << _U64(32)),
        _DIGITS4.take(rest),
    )
    before = np.clip(point, 0, 17)
    upto = np.clip(np.maximum(count, point), 0, 17)
    at = np.clip(point, -3, 16) + 3  # (the rows repr writes may hold anything here)
    shift = _SHIFT.take(at)
    back = _U64(64) - shift  # numpy shifts a uint64 by 64 to 0
    trail = ((point >= 1) & (count <= point)).astype(_U64)
    words = np.empty((len(digits), WEIGHT_WORDS), dtype=_U64)
    carry = _U64(0)
    for w in range(3):
        below = _BELOW[w].take(before)
        moved = chars[w] & _BELOW[w].take(upto) & ~below
        decor = _DECOR[w].take(at) | (_TRAIL[w].take(at) * trail) | _COMMA[w]
        words[:, w] = (chars[w] & below) | (moved << shift) | carry | decor
        carry = moved >> back
    sizes = np.where(point <= 0, 2 - point + count, point + 1 + np.maximum(count - point, 1))
    return words, sizes + 1


class VectorJson:
    """The JSON of ``codec.encode(batch, row)`` for each row of a batch, as ``json.dumps`` (the
    clients' separators, ``ensure_ascii=False``) writes it, from the whole batch's arrays.

    >>> from splade_es.sparse import Vocabulary
    >>> codec = TokenCodec(Vocabulary(["[CLS]", ".", "tax"], special_ids={0}))
    >>> batch = SparseBatch.from_rows([([0, 1, 2], [1.0, 0.5, 2.25]), ([], [])], vocab=codec.vocab)
    >>> VectorJson(codec).rows(batch)
    [b'{"%2E":0.5,"tax":2.25}', b'{}']
    """

    def __init__(self, codec: TokenCodec) -> None:
        self.codec = codec
        keys: list[bytes] = []
        self._plain = np.ones(len(codec.vocab), dtype=bool)  # keys json.dumps can write
        for i in range(len(codec.vocab)):
            try:  # json.dumps(key, ensure_ascii=False), as the codec's keys are strings
                keys.append(encode_basestring(codec.key(i)).encode() + b":")
            except UnicodeEncodeError:  # a lone surrogate: rows with it take json.dumps's path
                keys.append(b"")
                self._plain[i] = False
        words = max(1, *((len(key) + 7) // 8 for key in keys))
        table = np.frombuffer(b"".join(key.ljust(8 * words, b"\0") for key in keys), "<u8")
        self._keys = table.reshape(len(keys), words).T.astype(_U64)  # word w of every key
        self._key_sizes = np.array([len(key) for key in keys], dtype=np.int64)

    def rows(self, batch: SparseBatch) -> list[bytes]:
        """One JSON object per row of ``batch`` (feature key -> weight, special tokens and
        unstorable weights left out, as ``TokenCodec.encode`` does)."""
        self.codec.check_vocab(batch)
        if not _NATIVE:
            return [self._dumps(batch, row) for row in range(len(batch))]
        kept = self.codec.storable(batch.indices, batch.values)
        ids, weights = batch.indices[kept], batch.values[kept]
        bounds = np.concatenate(([0], np.cumsum(kept)))[batch.indptr]
        out: list[bytes] = []
        start = 0
        while start < len(batch):
            stop = int(np.searchsorted(bounds, bounds[start] + SLICE_VALUES, side="right")) - 1
            stop = min(max(stop, start + 1), len(batch))
            lo, hi = int(bounds[start]), int(bounds[stop])
            out += self._slice(ids[lo:hi], weights[lo:hi], bounds[start : stop + 1] - lo)
            start = stop
        if not self._plain.all():
            bad = np.flatnonzero(~self._plain[ids])  # rows json.dumps writes (and fails on)
            for row in np.unique(np.searchsorted(bounds, bad, side="right") - 1).tolist():
                out[row] = self._dumps(batch, row)
        return out

    def _slice(self, ids: np.ndarray, weights: np.ndarray, bounds: np.ndarray) -> list[bytes]:
        """The rows whose weights are ``weights`` (``bounds``: where each row starts)."""
        keys = len(self._keys)
        words = np.empty((len(ids), keys + WEIGHT_WORDS), dtype=_U64)
        for w in range(keys):
            words[:, w] = self._keys[w].take(ids)
        words[:, keys:], sizes = weight_texts(weights)
        ends = np.concatenate(([0], np.cumsum(self._key_sizes.take(ids) + sizes)))[bounds]
        text = words.tobytes().translate(None, b"\0")  # the one pass over the bytes
        return [
            b"{%s}" % text[a : max(a, b - 1)]  # without the last comma
            for a, b in zip(ends[:-1].tolist(), ends[1:].tolist(), strict=True)
        ]

    def _dumps(self, batch: SparseBatch, row: int) -> bytes:
        vector = self.codec.encode(batch, row)
        return json.dumps(vector, ensure_ascii=False, separators=(",", ":")).encode()
