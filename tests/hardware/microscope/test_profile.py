"""A microscope twin with a device profile: hidden values, changed physics, named in captures."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

msgpack = pytest.importorskip("msgpack", reason="the 'microscope' extra is needed")
pytest.importorskip("zmq", reason="the 'microscope' extra is needed")

import twinloop  # noqa: E402
from twinloop.cli import main  # noqa: E402
from twinloop.core.profile import DeviceProfile, parse_profile  # noqa: E402
from twinloop.hardware.microscope.fake import SimMicroscope  # noqa: E402
from twinloop.hardware.microscope.protocol import PROTOCOL_VERSION  # noqa: E402
from twinloop.hardware.microscope.server import MicroscopeServer, warm_up_requests  # noqa: E402

ID = "twinloop/StemSteer-v0"
FAST = dict(frame_pixels=64, frame_time_s=0.5)  # small frames keep these tests quick


def _numbers_and_texts(value, out_numbers: list, out_texts: list) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            out_texts.append(str(k))
            _numbers_and_texts(v, out_numbers, out_texts)
    elif isinstance(value, list | tuple):
        for v in value:
            _numbers_and_texts(v, out_numbers, out_texts)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int | float):
        out_numbers.append(float(value))
    elif isinstance(value, str):
        out_texts.append(value)


def test_no_reply_carries_the_profile_values_only_its_name() -> None:
    cfg = twinloop.make_config(ID, **FAST)
    profile = parse_profile("random:7", cfg)
    server = MicroscopeServer(SimMicroscope(cfg, profile), port=0)
    try:
        replies = []
        requests = warm_up_requests(server.microscope.limits)
        requests += [("park", {"x_angstrom": 1.0, "y_angstrom": 0.5})]
        requests += [("dwell", {"seconds": 5.0}), ("state", {}), ("hello", {})]
        for rid, (op, args) in enumerate(requests, start=1):
            msg = {"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args, "token": None}
            frames, ok = server.handle([b"", msgpack.packb(msg, use_bin_type=True)])
            assert ok, (op, frames)
            replies.append((frames[1], msgpack.unpackb(frames[1], raw=False)))
    finally:
        server.stop()
    numbers: list[float] = []
    texts: list[str] = []
    for _, reply in replies:
        _numbers_and_texts(reply, numbers, texts)
    secrets = [float(v) for v in profile.values.values()]
    for secret in secrets:
        assert not np.isclose(numbers, secret, rtol=1e-6, atol=0).any(), secret
        for raw, _ in replies:  # nor hidden in a binary field (a frame's bytes, packed floats)
            assert struct.pack(">d", secret) not in raw and struct.pack("<d", secret) not in raw
    for path in profile.values:
        assert not any(path.split(".")[-1] in t for t in texts), path
    hello = [r for _, r in replies if "protocol" in r.get("result", {})][-1]["result"]
    assert hello["identity"]["profile"] == "random:7"


def test_a_nominal_twin_says_nothing_of_profiles() -> None:
    mic = SimMicroscope(twinloop.make_config(ID, **FAST))
    assert "profile" not in mic.identity()


#: A fixed lattice orientation, so that bond directions are known: 30, 90, ... 330 degrees.
STILL = dict(FAST, randomize_lattice_angle=False, lattice_angle_deg=0.0)


def _dwell_around(mic: SimMicroscope, seed: int) -> tuple[int, list[float]]:
    """Hops and the rates of each of six 2-s dwells at the rate optimum of each bond direction.

    Three of the six directions point at a C neighbour of the Si, whichever its sublattice.
    """
    mic.reset_sample(seed)
    rates: list[float] = []
    hops = 0
    for k in range(6):
        truth = mic.truth()
        x, y = np.subtract(truth["si_position_angstrom"], truth["view_center_angstrom"])
        angle = np.radians(30.0 + 60.0 * k)
        mic.park(x + 2.02 * np.cos(angle), y + 2.02 * np.sin(angle))
        mic.dwell(2.0)
        truth = mic.truth()
        rates += truth["rates_per_s"]
        hops += truth["n_hops"]  # hops of the last command
    return hops, rates


def test_a_profile_changes_the_transition_statistics() -> None:
    cfg = twinloop.make_config(ID, **STILL)
    nominal = SimMicroscope(cfg)
    drawn = SimMicroscope(cfg, parse_profile("random:7", cfg))
    # same seed, same commands: the rates the hidden physics gives differ
    _, rates_nominal = _dwell_around(nominal, 3)
    _, rates_drawn = _dwell_around(drawn, 3)
    assert max(rates_nominal) > 0.01  # the beam did sit where the Si can jump
    assert not np.allclose(rates_nominal, rates_drawn, rtol=1e-3)
    # a device whose cross section is 3x the nominal one hops more often from the same seeds
    hot = SimMicroscope(cfg, DeviceProfile("hot", {"physics.cross_section_barn_60kv": 0.09}))
    seeds = range(30)
    hops_hot = sum(_dwell_around(hot, s)[0] for s in seeds)
    hops_nominal = sum(_dwell_around(nominal, s)[0] for s in seeds)
    assert hops_nominal > 0
    assert hops_hot > 1.5 * hops_nominal


def test_a_profile_may_not_change_what_clients_see() -> None:
    cfg = twinloop.make_config(ID, **FAST)
    with pytest.raises(ValueError, match="beam_current_na") as err:
        SimMicroscope(cfg, DeviceProfile("loud", {"physics.beam_current_na": 0.2}))
    assert "'loud'" in str(err.value)


def test_serve_refuses_a_bad_profile_precisely(tmp_path, capsys) -> None:
    assert main(["serve", "microscope", "--port", "0", "--profile", "random:x"]) == 2
    assert "seed must be an integer >= 0, got 'x'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"loss_ratio": 2.0}))
    assert main(["serve", "microscope", "--port", "0", "--profile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "loss_ratio = 2.0" in err and "[0.0, 1.0]" in err


def test_a_capture_through_a_profiled_twin_records_its_name_not_its_values(tmp_path) -> None:
    from twinloop.datasets import open_dataset, record
    from twinloop.datasets.writer import dataset_dir

    cfg = twinloop.make_config(ID, **FAST)
    profile = parse_profile("random:11", cfg)
    server = MicroscopeServer(SimMicroscope(cfg, profile), port=0).start()
    try:
        env = twinloop.make(ID, backend="remote", address=server.address, max_steps=2, **FAST)
        directory = dataset_dir(tmp_path, "tt/profiled-v0")
        env = record(env, directory, dataset_id="tt/profiled-v0")
        env.reset(seed=1)
        while True:
            *_, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                break
        env.close()
    finally:
        server.stop()
    with open_dataset(directory) as ds:
        meta = ds.metadata["twinloop"]
        assert meta["device_profile"] == {"name": "random:11"}
        assert "privileged" not in meta
    text = (directory / "data" / "metadata.json").read_text()
    for value in profile.values.values():
        assert repr(float(value)) not in text


def test_a_profiled_twin_answers_truth_without_its_rates() -> None:
    """The rates are the hidden physics; over the wire a profiled twin leaves them out.

    The client's privileged info then reports them as unknown (NaN), never as zero, while the
    sample's state (Si position, site, hops) still comes through for scoring.
    """
    from twinloop.hardware.microscope.backend import MicroscopeBackend

    cfg = twinloop.make_config(ID, **FAST)
    answers = {}
    for name, profile in (("nominal", None), ("profiled", parse_profile("random:7", cfg))):
        server = MicroscopeServer(SimMicroscope(cfg, profile), port=0)
        try:
            msg = {"v": PROTOCOL_VERSION, "id": 1, "op": "truth", "args": {}, "token": None}
            frames, ok = server.handle([b"", msgpack.packb(msg, use_bin_type=True)])
        finally:
            server.stop()
        assert ok
        answers[name] = msgpack.unpackb(frames[1], raw=False)["result"]
    assert len(answers["nominal"]["rates_per_s"]) == 3
    assert "rates_per_s" not in answers["profiled"]
    assert len(answers["profiled"]["si_position_angstrom"]) == 2

    class _Wire:  # what the remote client hands the backend: the twin's answer
        def truth(self) -> dict:
            return answers["profiled"]

    backend = MicroscopeBackend(cfg, _Wire(), kind="remote")
    backend._connected = True
    info = backend.privileged()
    assert np.isnan(info["rates_per_s"]).all() and info["rates_per_s"].shape == (3,)
    assert info["n_hops"] == answers["profiled"]["n_hops"]
