"""The one validation path of the microscope protocol (contracts 2 and 3 of ``protocol.py``).

:func:`~twinloop.hardware.microscope.protocol.decode_request` against random frames and
against valid requests with one field replaced by anything: it accepts exactly what the
contract calls well formed (:func:`~tests.hardware.microscope.helpers.contract_valid`),
exactly as sent, and refuses everything else with the request's id whenever it has one.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

pytest.importorskip("msgpack", reason="the 'microscope' extra (pyzmq, msgpack) is needed")
pytest.importorskip("zmq", reason="the 'microscope' extra is needed")
pytest.importorskip("hypothesis", reason="the 'test' extra (hypothesis) is needed")

from hypothesis import given
from hypothesis import strategies as st

from tests.hardware.microscope.helpers import (
    CONTRACT_OPS,
    MAX_ID,
    TOKEN,
    campaign,
    contract_valid,
    deep,
    examples,
    expected_rid,
    pack,
    request,
    requests,
)
from twinloop.hardware.microscope.protocol import (
    MAX_REQUEST_BYTES,
    OPERATIONS,
    REFUSALS,
    Refusal,
    decode_request,
    peek_id,
)


def test_the_oracle_and_the_protocol_know_the_same_operations() -> None:
    assert set(CONTRACT_OPS) == set(OPERATIONS)
    for op, spec in OPERATIONS.items():
        assert set(CONTRACT_OPS[op]) == set(spec)


def _check_frames(frames: list[bytes]) -> None:
    try:
        req = decode_request(frames, TOKEN)
    except Refusal as exc:  # the only way a request can fail
        assert exc.kind in REFUSALS
        assert exc.rid is None or 0 <= exc.rid <= MAX_ID
        assert "\n" not in str(exc) and len(str(exc)) < 1000
        return
    assert req.op in OPERATIONS


@examples(60)
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_random_frames_are_refused_never_crash(frames: list[bytes]) -> None:
    """Contract 2: random bytes in any number of frames end as a refusal, never an exception."""
    _check_frames(frames)


@pytest.mark.slow
@campaign(5000)
@given(st.lists(st.binary(max_size=512), max_size=9))
def test_random_frames_are_refused_never_crash_campaign(frames: list[bytes]) -> None:
    _check_frames(frames)


def _check_request(drawn: tuple[dict[Any, Any], bool]) -> None:
    msg, untouched = drawn
    try:
        raw = pack(msg)
    except (OverflowError, ValueError, TypeError):
        return  # not encodable: no client can send it
    valid = contract_valid(msg)
    assert valid or not untouched
    try:
        req = decode_request([b"", raw], TOKEN)
    except Refusal as exc:
        assert not valid, f"a valid request was refused: {exc}"
        assert exc.kind in REFUSALS
        assert exc.rid == expected_rid(msg)  # contract 3: the id whenever one can be read
        assert "\n" not in str(exc) and len(str(exc)) < 1000
        return
    assert valid, f"an invalid request was accepted: {msg!r}"
    # accepted: exactly the operation and arguments sent
    assert (req.id, req.op, req.args) == (msg["id"], msg["op"], msg.get("args", {}))


@examples(200)
@given(requests())
def test_every_field_of_every_request_is_validated(drawn: tuple[dict[Any, Any], bool]) -> None:
    """Contracts 2, 3: accepted exactly when well formed, as sent; else refused with its id."""
    _check_request(drawn)


@pytest.mark.slow
@campaign(5000)
@given(requests())
def test_every_field_of_every_request_is_validated_campaign(
    drawn: tuple[dict[Any, Any], bool],
) -> None:
    _check_request(drawn)


@pytest.mark.parametrize(
    ("msg", "kind"),
    [
        ({**request(), "v": 2}, "version"),
        ({**request(), "v": True}, "version"),
        (request(token=None), "unauthorized"),
        (request(token="s3cr\u00e9t-\u2717"), "unauthorized"),
        (request(token=TOKEN.encode()), "bad_request"),
        (request(["ping"]), "bad_request"),
        (request({"op": "ping"}), "bad_request"),
        (request("park", x_angstrom="1", y_angstrom=0.0), "bad_request"),
        (request("park", x_angstrom=math.nan, y_angstrom=0.0), "bad_request"),
        (request("acquire", pixels=True, pixel_time_s=1e-6), "bad_request"),
        (request("reset", seed=-2), "bad_request"),
    ],
)
def test_each_refusal_has_its_kind_and_the_id(msg: dict[str, Any], kind: str) -> None:
    with pytest.raises(Refusal) as info:
        decode_request([b"", pack(msg)], TOKEN)
    assert (info.value.kind, info.value.rid) == (kind, 5)


def test_any_unicode_token_is_compared_on_its_bytes() -> None:
    """Issue 13: a twin started with a non-ASCII token refused even the correct one."""
    assert decode_request([b"", pack(request())], TOKEN).op == "ping"
    assert decode_request([b"", pack(request(token="x"))], None).op == "ping"  # none required
    with pytest.raises(Refusal, match="wrong or missing token"):
        decode_request([b"", pack(request(token=TOKEN[:-1]))], TOKEN)


def test_deep_nesting_and_bad_encodings_are_refused_with_their_id() -> None:
    for depth in (5, 3000, 30000):  # msgpack's own stack ends near 1024 levels
        with pytest.raises(Refusal) as info:
            decode_request([b"", deep(depth)], TOKEN)
        assert (info.value.kind, info.value.rid) == ("bad_request", 9)
    for payload in (b"\x82\xa2id\x07\xa1v\xc1", b"\x81\xa2id\x07\xd4\x01\x00"):  # 0xc1; ext
        assert peek_id(payload) == 7
        with pytest.raises(Refusal) as info:
            decode_request([b"", payload], TOKEN)
        assert (info.value.kind, info.value.rid) == ("bad_request", 7)


def test_a_wrong_envelope_is_refused_with_the_id_it_carries() -> None:
    """Contract 1: an extra frame, no delimiter, copies: ``bad_request``, id if readable."""
    raw = pack(request(rid=77))
    for frames in ([raw], [b"", raw, b"x"], [raw, raw, raw], [b"", b"", raw], [b"x", raw], []):
        with pytest.raises(Refusal, match="two frames") as info:
            decode_request(frames, TOKEN)
        assert info.value.kind == "bad_request"
        assert info.value.rid == (77 if frames else None)
    with pytest.raises(Refusal, match="exceeds"):
        decode_request([b"", raw + bytes(MAX_REQUEST_BYTES)], TOKEN)
