"""The client side of the microscope twin (contracts 3 and 8 of ``protocol.py``; issue 13).

The remote client bounds what it receives and reports a twin's refusal as the refusal; the
backend tries the safe state on any fault, during ``reset`` as during a step.
"""

from __future__ import annotations

import threading

import pytest

zmq = pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")
pytest.importorskip("msgpack", reason="the 'microscope' extra is needed")
pytest.importorskip("hypothesis", reason="the 'test' extra (hypothesis) is needed")

from tests.hardware.microscope.helpers import (  # noqa: E402
    TOKEN,
    client,
    make_twin_config,
    pack,
)
from twinloop.hardware.microscope.backend import MicroscopeBackend  # noqa: E402
from twinloop.hardware.microscope.fake import SimMicroscope  # noqa: E402
from twinloop.hardware.microscope.protocol import MicroscopeFault  # noqa: E402
from twinloop.hardware.microscope.remote import RemoteMicroscope  # noqa: E402
from twinloop.hardware.microscope.server import MicroscopeServer  # noqa: E402


class Rogue:
    """A REP endpoint that answers every request with the same bytes."""

    def __init__(self, reply: bytes) -> None:
        """Bind to a free port and answer in a thread."""
        self.sock = zmq.Context.instance().socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.address = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.reply = reply
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(50):
                self.sock.recv()
                self.sock.send(self.reply)

    def close(self) -> None:
        """Stop answering."""
        self.stop.set()
        self.thread.join()
        self.sock.close(linger=0)


def test_the_client_refuses_a_reply_larger_than_its_limit() -> None:
    """Contract 8: a rogue endpoint's oversized reply is never received; the error says so.

    Issue 13: the client accepted and decoded a 256 MiB reply.
    """
    rogue = Rogue(b"\xc6" + (2**20).to_bytes(4, "big") + bytes(2**20))  # a 1 MiB bin
    mic = RemoteMicroscope(rogue.address, timeout_s=0.5, max_frame_pixels=64)
    big = RemoteMicroscope(rogue.address, timeout_s=0.5, max_reply_bytes=2**21)
    try:
        assert mic.max_reply_bytes == 4 * 64 * 64 + 2**20  # the default: one frame and 1 MiB
        mic.max_reply_bytes = 64 * 1024
        with pytest.raises(MicroscopeFault, match=r"max_reply_bytes = 65536"):
            mic.connect()
        with pytest.raises(MicroscopeFault, match="not protocol v1"):  # received, then refused
            big.connect()
    finally:
        mic.close()
        big.close()
        rogue.close()
    with pytest.raises(ValueError, match="max_reply_bytes"):
        RemoteMicroscope(rogue.address, max_reply_bytes=0)


def test_a_refusal_without_an_id_is_reported_as_the_refusal() -> None:
    """Contract 3: a twin that could not read the id still answers; the client says why."""
    refusal = {"v": 1, "id": None, "ok": False, "error": {"type": "bad_request", "message": "x"}}
    rogue = Rogue(pack(refusal))
    mic = RemoteMicroscope(rogue.address, timeout_s=1.0)
    try:
        with pytest.raises(MicroscopeFault, match=r"bad_request.*hello"):
            mic.connect()
        rogue.reply = pack({**refusal, "id": 12345})  # another request's id: a mismatch
        with pytest.raises(MicroscopeFault, match="does not match"):
            mic.request("ping")
    finally:
        mic.close()
        rogue.close()


def test_the_client_reports_a_refusal_not_an_id_mismatch() -> None:
    """Contract 3: what the twin refused reaches the caller as the refusal."""
    twin = MicroscopeServer(SimMicroscope(make_twin_config()), port=0, token=TOKEN).start()
    try:
        mic = client(twin.address)
        try:
            with pytest.raises(
                MicroscopeFault, match=r"bad_request.*park\.x_angstrom must be float"
            ):
                mic.request("park", x_angstrom="1", y_angstrom=0.0)
            with pytest.raises(MicroscopeFault, match=r"bad_request.*unknown operation"):
                mic.request("explode")
            intruder = RemoteMicroscope(twin.address, token="s3cr\u00e9t-\u2717", timeout_s=2)
            try:
                with pytest.raises(PermissionError):
                    intruder.connect()
            finally:
                intruder.close()
            mic.state()  # the same client goes on
        finally:
            mic.close()
    finally:
        twin.stop()


class _FaultyReset(SimMicroscope):
    """An instrument whose link fails while a new sample is being set up."""

    fail = False

    def reset_sample(self, seed: int | None) -> bool:
        if self.fail:
            raise MicroscopeFault("link lost during reset")
        return super().reset_sample(seed)


def test_a_fault_during_reset_blanks_the_beam() -> None:
    """Contract 8: the backend tries the safe state on a fault in reset, as in step."""
    cfg = make_twin_config()
    mic = _FaultyReset(cfg)
    backend = MicroscopeBackend(cfg, mic, kind="sim-image")
    backend.connect()
    mic.unblank()
    mic.fail = True
    with pytest.raises(MicroscopeFault, match="link lost"):
        backend.reset(seed=0)
    assert mic.blanked
