"""The shared request envelope of the ZeroMQ twins (``twinloop.hardware.wire``)."""

from __future__ import annotations

import pytest

msgpack = pytest.importorskip("msgpack", reason="the 'microscope' extra is needed")

from twinloop.hardware import wire  # noqa: E402

OPS = {"say": {"text": wire.Text(3)}, "ping": {}}


def _frames(msg: object) -> list[bytes]:
    return [b"", msgpack.packb(msg, use_bin_type=True)]


def _request(**fields: object) -> dict:
    return {"v": 1, "id": 7, "op": "say", "args": {"text": "abc"}, "token": None} | fields


def test_text_accepts_strings_up_to_its_limit() -> None:
    req = wire.decode_request(_frames(_request()), None, operations=OPS, version=1)
    assert (req.id, req.op, req.args) == (7, "say", {"text": "abc"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abcd", "say.text has 4 characters, over 3"),
        (12, "say.text must be a string, got int 12"),
        ([b"x"], "say.text must be a string"),
    ],
)
def test_text_refuses_what_is_not_a_short_string(text: object, message: str) -> None:
    with pytest.raises(wire.Refusal) as info:
        wire.decode_request(_frames(_request(args={"text": text})), None, operations=OPS, version=1)
    assert info.value.kind == "bad_request" and message in str(info.value)
    assert info.value.rid == 7  # the refusal names the request it answers


def test_envelope_refusals_carry_the_id_when_readable() -> None:
    cases = [
        (_request(v=2), "version"),
        (_request(token="x"), "unauthorized"),
        (_request(op="nope"), "bad_request"),
        (_request(extra=1), "bad_request"),
    ]
    for msg, kind in cases:
        token = "secret" if kind == "unauthorized" else None
        with pytest.raises(wire.Refusal) as info:
            wire.decode_request(_frames(msg), token, operations=OPS, version=1)
        assert (info.value.kind, info.value.rid) == (kind, 7)
