"""Which HDF5 readers read what twinloop writes: a matrix of readers x kinds of dataset.

twinloop encodes its HDF5 files itself (``datasets/_hdf5.py``), so "readable by HDF5" is a
promise that only other readers can check. Each test here writes one kind of dataset with the
current writer, reads every group, dataset and attribute of its ``main_data.hdf5`` with one
reader, and compares digests of the values (``reader_matrix/dump.py``) with the reference:

* the reference is h5py of this venv (newest libhdf5), and its row is checked against
  twinloop's own reader (``open_dataset``): every dataset and episode attribute equal;
* h5py releases that bundle older libhdf5 (1.14, 1.12, 1.10, 1.8), PyTables and pyfive each run
  in their own venv, built on first use under ``~/.cache/twinloop/test-venvs/<name>`` (or
  ``$TWINLOOP_TEST_VENVS``) and reused afterwards; the Pythons they need (3.6, 3.8, 3.10) are
  looked up on PATH and in pyenv, and a missing one skips that row;
* ``h5dump`` (Debian's ``hdf5-tools``) when it is on PATH: object list from ``h5dump -n 1``,
  numeric datasets as little-endian binary (``-b LE``), enums, strings and attributes parsed
  from its text output.

A test fails with the objects its reader could not read or read differently, and the module
prints the whole table (reader x kind, problems by cause, library versions) at its end. Values
must be identical; a reader that returns them in a wider type without loss (h5py 2.7 gives
float64 for float32) passes with a note, and an enum bool read as int8 is the same bytes.
Nothing is expected to fail: a red cell is a compatibility bug, or a minimum version to state.
The matrix is ``slow``; two fast tests check that the digests and comparisons it relies on
find a single flipped bit and name its dataset.
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import twinloop
from tests.datasets.conftest import STEM, ToyEnv, run_episodes
from twinloop.datasets import RecordEpisodes, RecordVectorEpisodes, open_dataset
from twinloop.datasets.reader import EpisodeData
from twinloop.datasets.schema import (
    SOURCE_ACTION,
    SOURCE_OBS,
    SOURCE_REWARD,
    SOURCE_TERMINATED,
    SOURCE_TRUNCATED,
    FieldSpec,
)

DUMP_SCRIPT = Path(__file__).parent / "reader_matrix" / "dump.py"
VENV_ROOT = Path(
    os.environ.get("TWINLOOP_TEST_VENVS", Path.home() / ".cache" / "twinloop" / "test-venvs")
)
MARKER = "twinloop-test-venv.json"
#: One-byte types that hold an HDF5 enum {FALSE: 0, TRUE: 1}: h5py says bool, others int8.
BYTE_BOOL = {"|b1", "|i1", "|u1"}
MAX_LISTED = 15


def _load_dump_module() -> Any:
    spec = importlib.util.spec_from_file_location("reader_matrix_dump", DUMP_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dump_mod = _load_dump_module()


# --- the readers --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Reader:
    """One row of the matrix.

    Attributes:
        id: Test id.
        module: What dump.py is asked to use (``h5py``, ``tables``, ``pyfive``) or ``h5dump``.
        python: ``"3.6"``: a venv on that Python; ``""``: on the Python running the tests.
        requirements: What pip installs into the venv (none: no venv, this interpreter).
        library: Prefix that the reported libhdf5 must have (the id names it).
        limits: ``(object path pattern, error text)`` of failures that are the reader's own
            documented limits, not the file's: reported as notes instead of failures.
    """

    id: str
    module: str
    python: str = ""
    requirements: tuple[str, ...] = ()
    library: str = ""
    limits: tuple[tuple[str, str], ...] = ()

    @property
    def here(self) -> bool:
        """Runs in this interpreter: the reference."""
        return self.module != "h5dump" and not self.requirements


READERS = [
    Reader("h5py-here", "h5py"),
    # bundled libhdf5 read from each wheel (h5py.libs/libhdf5-*.so): 3.11.0 -> 1.14.2,
    # 3.7.0 -> 1.12.2, 2.10.0 -> 1.10.4, 2.7.1 -> 1.8.18; old numpy where the wheel needs it
    Reader("h5py-3.11-hdf5-1.14", "h5py", "3.11", ("h5py==3.11.0", "numpy<2"), "HDF5 1.14."),
    Reader("h5py-3.7-hdf5-1.12", "h5py", "3.10", ("h5py==3.7.0", "numpy<2"), "HDF5 1.12."),
    Reader("h5py-2.10-hdf5-1.10", "h5py", "3.8", ("h5py==2.10.0", "numpy<1.20"), "HDF5 1.10."),
    Reader(
        "h5py-2.7-hdf5-1.8",
        "h5py",
        "3.6",
        ("h5py==2.7.1", "numpy<1.20"),
        "HDF5 1.8.",
        # h5py < 2.10 has no conversion for fixed-length UTF-8 strings, also for those
        # libhdf5 itself writes (checked by hand): Text fields need h5py >= 2.10 (README)
        limits=((r"/observations/note$", "no appropriate function for conversion path"),),
    ),
    Reader("tables", "tables", "", ("tables>=3.9",), "HDF5 "),
    Reader("pyfive", "pyfive", "", ("pyfive>=0.4",)),
    Reader("h5dump", "h5dump", library="HDF5 "),
]

KINDS = ["stem", "stem-vector", "toy-image", "toy-appended", "touched"]

#: (reader id, kind) -> one line for the table; reader id -> versions.
RESULTS: dict[tuple[str, str], str] = {}
VERSIONS: dict[str, str] = {}


# --- the datasets -------------------------------------------------------------------------------
def _write(kind: str, directory: Path) -> None:
    """Record one kind of dataset into ``directory`` with the current writer."""
    if kind == "stem":  # numeric Box observations and actions, bool enums, nested infos
        env = RecordEpisodes(twinloop.make(STEM), directory)
        run_episodes(env, 3, seed=0)
        env.close()
    elif kind == "stem-vector":  # every row of a vector env, through the capture companion
        rec = RecordVectorEpisodes(twinloop.make_vec(STEM, 3), directory)
        rec.reset(seed=3)
        rec.action_space.seed(3)
        for _ in range(150):
            rec.step(rec.action_space.sample())
        rec.close()
    elif kind == "toy-image":  # Dict: (H, W, C) uint8 image (chunked + deflate), vector, Text
        env = RecordEpisodes(ToyEnv(), directory)
        run_episodes(env, 3, seed=1)
        env.close()
    elif kind == "toy-appended":  # (H, W) image; a second writer appends Huffman-only chunks
        env = RecordEpisodes(ToyEnv(image_shape=(40, 36)), directory)
        run_episodes(env, 2, seed=20)
        env.close()
        env = RecordEpisodes(
            ToyEnv(image_shape=(40, 36)),
            directory,
            mode="append",
            compression_strategy="huffman",
        )
        run_episodes(env, 2, seed=30)
        env.close()
    elif kind == "touched":  # another writer adds a group and attributes; twinloop appends
        env = RecordEpisodes(twinloop.make(STEM), directory)
        run_episodes(env, 3, seed=40)
        env.close()
        with h5py.File(_h5(directory), "a") as f:
            f.create_group("notes").attrs["rating"] = 3
            f["episode_0"].attrs["reviewed"] = 1
        env = RecordEpisodes(twinloop.make(STEM), directory, mode="append")
        run_episodes(env, 2, seed=50)
        env.close()
    else:
        raise ValueError(f"unknown dataset kind {kind!r}")


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Kind -> dataset folder, all written once for the module."""
    root = tmp_path_factory.mktemp("reader-matrix")
    out = {}
    for kind in KINDS:
        directory = root / "matrix" / f"{kind}-v0"
        _write(kind, directory)
        out[kind] = directory
    return out


def _h5(directory: Path) -> Path:
    return directory / "data" / "main_data.hdf5"


# --- running dump.py ----------------------------------------------------------------------------
def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def run_dump(python: str, module: str, h5: Path, out: Path, expect: Path | None = None) -> dict:
    """Run dump.py with ``python`` and return its JSON."""
    cmd = [python, str(DUMP_SCRIPT), module, str(h5), "--out", str(out)]
    if expect is not None:
        cmd += ["--expect", str(expect)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env=_clean_env(), check=False
    )
    if proc.returncode != 0 or not out.exists():
        pytest.fail(
            f"dump.py {module} exited {proc.returncode} under {python}:\n{proc.stderr[-3000:]}"
        )
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def references(captures: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Kind -> (reference dump by this venv's h5py, its JSON file), computed on first use."""
    root = tmp_path_factory.mktemp("reference")
    cache: dict[str, tuple[dict, Path]] = {}

    def get(kind: str) -> tuple[dict, Path]:
        if kind not in cache:
            out = root / f"{kind}.json"
            cache[kind] = (run_dump(sys.executable, "h5py", _h5(captures[kind]), out), out)
        return cache[kind]

    return get


# --- venvs --------------------------------------------------------------------------------------
def _version_of(python: str) -> str:
    proc = subprocess.run(
        [python, "-c", "import sys, venv; print('%d.%d.%d' % sys.version_info[:3])"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def find_python(version: str) -> str | None:
    """An interpreter ``X.Y`` (with ``venv``): this one's base, pyenv's, or one on PATH."""
    this = "{}.{}".format(*sys.version_info[:2])
    if not version:
        version = this
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = []
    if version == this:
        candidates.append(getattr(sys, "_base_executable", sys.executable))
    found = sorted(glob.glob(str(pyenv / "versions" / f"{version}.*" / "bin" / f"python{version}")))
    candidates += list(reversed(found))
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    for python in candidates:
        if _version_of(python).startswith(version + "."):
            return python
    return None


def venv_python(reader: Reader) -> str:
    """The venv interpreter for ``reader``, building the venv if it is missing or stale."""
    python = find_python(reader.python)
    if python is None:
        pytest.skip(
            f"{reader.id} needs Python {reader.python}, which is neither on PATH nor in pyenv "
            f"(install it, e.g. `pyenv install {reader.python}`)"
        )
    want = {"python": _version_of(python), "requirements": list(reader.requirements)}
    directory = VENV_ROOT / reader.id
    VENV_ROOT.mkdir(parents=True, exist_ok=True)
    with open(VENV_ROOT / f"{reader.id}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs never build the same venv at once
        marker = directory / MARKER
        if marker.exists() and json.loads(marker.read_text()) == want:
            return str(directory / "bin" / "python")
        shutil.rmtree(directory, ignore_errors=True)
        log = []
        reqs = list(reader.requirements)
        for cmd in (
            [python, "-m", "venv", str(directory)],
            [str(directory / "bin" / "python"), "-m", "pip", "install", "--no-input", *reqs],
        ):
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=1200,
                env=_clean_env(),
                check=False,
            )
            log.append(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
            if proc.returncode != 0:
                pytest.fail(
                    f"could not build the venv of {reader.id} in {directory}:\n"
                    + "\n".join(log)[-4000:]
                )
        (directory / "build.log").write_text("\n".join(log))
        marker.write_text(json.dumps(want))
    return str(directory / "bin" / "python")


# --- h5dump -------------------------------------------------------------------------------------
_H5_TYPES = [
    (re.compile(r"^H5T_STD_([IU])(\d+)(LE|BE)$"), lambda m: f"{m[1].lower()}{int(m[2]) // 8}"),
    (re.compile(r"^H5T_IEEE_F(\d+)(LE|BE)$"), lambda m: f"f{int(m[1]) // 8}"),
]


def _atomic_dtype(name: str) -> np.dtype:
    for pattern, make in _H5_TYPES:
        m = pattern.match(name)
        if m:
            order = "<" if m[m.lastindex] == "LE" else ">"
            return np.dtype(order + make(m))
    raise ValueError(f"h5dump type {name} is not handled")


def _block(text: str, opener: str) -> str | None:
    """The text inside ``opener {`` ... its matching ``}`` (quotes respected)."""
    at = text.find(opener + " {")
    if at < 0:
        return None
    depth, quoted, escape = 0, False, False
    start = text.index("{", at)
    for k in range(start, len(text)):
        c = text[k]
        if quoted:
            if escape:
                escape = False
            elif c == "\\":
                escape = True
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : k]
    return None


_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", '"': b'"', "\\": b"\\", "b": b"\b", "f": b"\f"}


def _unescape(s: str) -> bytes:
    out, k, raw = bytearray(), 0, s.encode("utf-8")
    while k < len(raw):
        c = raw[k : k + 1]
        if c == b"\\" and re.match(rb"[0-7]{3}", raw[k + 1 : k + 4]):
            out += bytes([int(raw[k + 1 : k + 4], 8)])
            k += 4
        elif c == b"\\" and k + 1 < len(raw) and chr(raw[k + 1]) in _ESCAPES:
            out += _ESCAPES[chr(raw[k + 1])]
            k += 2
        else:
            out += c
            k += 1
    return bytes(out)


def _header(text: str) -> tuple[np.dtype, tuple[int, ...], dict[str, int]]:
    """Element dtype, shape and enum members from h5dump's DATATYPE and DATASPACE lines."""
    m = re.search(r"DATASPACE\s+(SCALAR|NULL|SIMPLE\s*\{\s*\(([^)]*)\))", text)
    if m is None:
        raise ValueError("no DATASPACE in h5dump's output")
    shape = () if m[2] is None else tuple(int(x) for x in m[2].split(","))
    m = re.search(r"DATATYPE\s+(\w+)", text)
    if m is None:
        raise ValueError("no DATATYPE in h5dump's output")
    enum: dict[str, int] = {}
    if m[1] == "H5T_STRING":
        size = re.search(r"STRSIZE\s+(\d+);", text)
        if size is None:
            raise ValueError("variable-length strings are not handled")
        return np.dtype(f"S{size[1]}"), shape, enum
    if m[1] == "H5T_ENUM":
        body = _block(text, "H5T_ENUM") or ""
        base = re.search(r"(H5T_\w+);", body)
        enum = {name: int(v) for name, v in re.findall(r'"([^"]*)"\s+(-?\d+);', body)}
        return _atomic_dtype(base[1]), shape, enum
    return _atomic_dtype(m[1]), shape, enum


def _parse_text_value(text: str) -> np.ndarray:
    """The value that h5dump printed (``DATA {...}`` of a dataset or attribute)."""
    dtype, shape, enum = _header(text)
    data = _block(text, "DATA")
    if data is None:
        raise ValueError("no DATA block in h5dump's output")
    if dtype.kind == "S":
        items: list[Any] = [_unescape(s) for s in re.findall(r'"((?:[^"\\]|\\.)*)"', data)]
    else:
        data = re.sub(r"\(\d+(?:,\d+)*\):", " ", data)
        tokens = [t for t in re.split(r"[,\s]+", data) if t]
        items = [enum[t] if enum else (float(t) if dtype.kind == "f" else int(t)) for t in tokens]
    return np.array(items, dtype=dtype).reshape(shape)


def _h5dump(cmd: list[str]) -> tuple[str, str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0 or "h5dump error" in proc.stderr:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[:300]}")
    return proc.stdout, proc.stderr


def h5dump_dump(h5dump: str, h5: Path, reference: dict, tmp: Path) -> dict:
    """What h5dump reads in ``h5``, in dump.py's format (digests of every object)."""
    version = subprocess.run([h5dump, "--version"], capture_output=True, text=True, check=False)
    lib = re.search(r"Version\s+([\d.]+)", version.stdout + version.stderr)
    out: dict[str, Any] = {
        "reader": "h5dump",
        "reader_version": lib[1] if lib else "?",
        "library": f"HDF5 {lib[1]}" if lib else "?",
        "python": "-",
        "numpy": "-",
        "objects": {},
        "errors": {},
    }
    objects, errors = out["objects"], out["errors"]
    expected = dump_mod.expected_dtypes(reference)
    try:
        listing, _ = _h5dump([h5dump, "-n", "1", str(h5)])
    except RuntimeError as exc:
        errors["/"] = f"h5dump -n 1: {exc}"
        return out
    entries = re.findall(
        r"^\s*(group|dataset|attribute|datatype|link|ext link)\s+(\S.*)$", listing, re.M
    )
    for kind, path in entries:
        if kind in ("group", "dataset"):
            objects[path] = {"kind": kind, "attrs": {}}
    for kind, path in entries:
        try:
            if kind == "dataset":
                binary = tmp / "value.bin"
                binary.unlink(missing_ok=True)
                text, _ = _h5dump([h5dump, "-d", path, "-b", "LE", "-o", str(binary), str(h5)])
                dtype, shape, enum = _header(text)
                if dtype.kind in "iuf" and not enum:  # -b writes atomic numbers only
                    value = np.frombuffer(binary.read_bytes(), dtype=dtype.newbyteorder("<"))
                    value = value.reshape(shape)
                else:
                    text, _ = _h5dump([h5dump, "-m", "%.17g", "-d", path, str(h5)])
                    value = _parse_text_value(text)
                objects[path].update(dump_mod.describe(value, None, expected.get(path)))
            elif kind == "attribute":
                owner, _, name = path.rpartition("/")
                owner = owner or "/"
                text, _ = _h5dump([h5dump, "-m", "%.17g", "-a", path, str(h5)])
                value = _parse_text_value(text)
                key = f"{owner}@{name}"
                objects[owner]["attrs"][name] = dump_mod.describe(value, None, expected.get(key))
            elif kind not in ("group",):
                errors[path] = f"unexpected {kind} in the file"
        except Exception as exc:
            owner, _, name = path.rpartition("/")
            key = path if kind != "attribute" else f"{owner or '/'}@{name}"
            errors[key] = f"{type(exc).__name__}: {exc}"
            if kind == "dataset":
                objects.pop(path, None)
    return out


# --- comparing ----------------------------------------------------------------------------------
def _same_dtype(a: str, b: str) -> bool:
    return a == b or {a, b} <= BYTE_BOOL


def _compare_value(what: str, want: dict, have: dict, notes: list[str]) -> str | None:
    """None when ``have`` holds the reference's values, else why not."""
    if have["shape"] != want["shape"]:
        return f"{what}: shape {have['shape']} instead of {want['shape']}"
    if _same_dtype(have["dtype"], want["dtype"]) and have["sha256"] == want["sha256"]:
        return None
    cast = have.get("cast") or {}
    if cast.get("lossless") and cast.get("sha256") == want["sha256"]:
        notes.append(f"read {want['dtype']} as {have['dtype']} (values equal)")
        return None
    return (
        f"{what}: values differ: {have['dtype']} {have['head']}... instead of "
        f"{want['dtype']} {want['head']}..."
    )


def compare(reference: dict, got: dict) -> tuple[list[str], list[str]]:
    """Problems (objects missing, unreadable or different) and notes of ``got`` vs reference."""
    problems: list[str] = []
    notes: list[str] = []
    errors = dict(got["errors"])
    if "/" in errors and not got["objects"]:
        return [f"/: the file did not open: {errors['/']}"], notes
    for path, want in reference["objects"].items():
        have = got["objects"].get(path)
        if have is None:
            problems.append(f"{path}: {errors.pop(path, 'not found')}")
            continue
        if have["kind"] != want["kind"]:
            problems.append(f"{path}: a {have['kind']} instead of a {want['kind']}")
            continue
        if want["kind"] == "dataset":
            problem = _compare_value(path, want, have, notes)
            if problem:
                problems.append(problem)
        for name, attr in want["attrs"].items():
            key = f"{path}@{name}"
            if name not in have["attrs"]:
                problems.append(f"{key}: {errors.pop(key, 'not found')}")
                continue
            problem = _compare_value(key, attr, have["attrs"][name], notes)
            if problem:
                problems.append(problem)
        for name in sorted(set(have["attrs"]) - set(want["attrs"])):
            problems.append(f"{path}@{name}: not in the reference")
    for path in sorted(set(got["objects"]) - set(reference["objects"])):
        problems.append(f"{path}: not in the reference")
    problems += [f"{key}: {text}" for key, text in sorted(errors.items())]
    return problems, sorted(set(notes))


def causes(problems: list[str]) -> list[str]:
    """Problems grouped by object (episode number dropped) and cause: ``name xN: cause``."""
    groups: dict[tuple[str, str], int] = {}
    for problem in problems:
        path, _, cause = problem.partition(": ")
        name = re.sub(r"^/episode_\d+(?=/|@|$)", "/episode_*", path)
        if cause.startswith("values differ"):
            cause = "values differ"
        groups[(name, cause)] = groups.get((name, cause), 0) + 1
    return [f"{name} x{n}: {cause}" for (name, cause), n in groups.items()]


def _field_value(ep: EpisodeData, f: FieldSpec) -> np.ndarray:
    """What twinloop's reader returns for field ``f``, as the stored dtype."""
    if f.source in (SOURCE_OBS, SOURCE_ACTION):
        value = ep.observations if f.source == SOURCE_OBS else ep.actions
        for k in f.key:
            value = value[k]
    elif f.source == SOURCE_REWARD:
        value = ep.rewards
    elif f.source == SOURCE_TERMINATED:
        value = ep.terminations
    elif f.source == SOURCE_TRUNCATED:
        value = ep.truncations
    else:
        value = ep.infos[f.key[0]]
    if f.text:
        return np.array([s.encode("utf-8") for s in value], dtype=f.np_dtype)
    return np.asarray(value).astype(f.np_dtype)


def compare_with_twinloop(directory: Path, reference: dict) -> list[str]:
    """Problems where this venv's h5py disagrees with twinloop's reader (``open_dataset``)."""
    problems: list[str] = []
    ds = open_dataset(directory)
    objects = reference["objects"]
    expected_paths = set()
    notes: list[str] = []
    for ep in ds.iterate_episodes():
        group = f"/episode_{ep.id}"
        for f in ds.fields:
            path = f"{group}/{f.path}"
            expected_paths.add(path)
            if path not in objects:
                problems.append(f"{path}: twinloop reads it, h5py does not find it")
                continue
            ours = dump_mod.describe(_field_value(ep, f))
            problem = _compare_value(path, ours, objects[path], notes)
            if problem:
                problems.append(f"{problem} (h5py vs twinloop)")
        attrs = objects.get(group, {}).get("attrs", {})
        compared = [k for k in ep.metadata if k in attrs]
        if not {"id", "seed", "total_steps"} <= set(compared):
            problems.append(f"{group}: h5py lacks episode attributes; has {sorted(attrs)}")
        for name in compared:
            ours = dump_mod.describe(np.asarray(ep.metadata[name]).astype(attrs[name]["dtype"]))
            problem = _compare_value(f"{group}@{name}", ours, attrs[name], notes)
            if problem:
                problems.append(f"{problem} (h5py vs twinloop)")
    datasets = {p for p, o in objects.items() if o["kind"] == "dataset"}
    for path in sorted(datasets - expected_paths):
        problems.append(f"{path}: in the file but not among twinloop's fields")
    return problems


# --- the matrix ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _print_matrix(request: pytest.FixtureRequest) -> Iterator[None]:
    """At the end of the module, print the table of results and the library versions."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not RESULTS:
        return
    with capture.global_and_fixture_disabled():  # else the table lands in captured output
        _write_matrix(reporter)


def _write_matrix(reporter: Any) -> None:
    readers = [r.id for r in READERS if any(key[0] == r.id for key in RESULTS)]
    width = max(len(r) for r in readers) + 2
    reporter.write("\n")  # after the progress dots
    reporter.write_sep("=", "HDF5 reader matrix (current writer)")
    reporter.write_line(" " * width + "".join(f"{k:<16}" for k in KINDS))
    for r in readers:
        cells = [_cell(RESULTS.get((r, kind), "-")) for kind in KINDS]
        reporter.write_line(f"{r:<{width}}" + "".join(f"{c:<16}" for c in cells))
    reporter.write_line("(pass*: passed with a note below)")
    for (r, kind), line in RESULTS.items():
        if line != "pass":
            reporter.write_line(f"{r} / {kind}: {line}")
    for r in readers:
        if r in VERSIONS:
            reporter.write_line(f"{r}: {VERSIONS[r]}")


def _cell(line: str) -> str:
    if line == "pass":
        return "pass"
    return "pass*" if line.startswith("pass") else line.split(":")[0]


def _record(reader: Reader, kind: str, got: dict, record_property: Any) -> None:
    VERSIONS[reader.id] = (
        f"{got['reader']} {got['reader_version']}, libhdf5: {got['library']}, "
        f"Python {got['python']}, numpy {got['numpy']}"
    )
    record_property("reader_version", got["reader_version"])
    record_property("libhdf5", got["library"])
    sys.stderr.write(f"\n{reader.id}: {VERSIONS[reader.id]}\n")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first run builds six venvs
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reader", READERS, ids=[r.id for r in READERS])
def test_reader_matrix(
    reader: Reader,
    kind: str,
    captures: dict[str, Path],
    references: Any,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """``reader`` reads every group, dataset and attribute of a ``kind`` dataset exactly."""
    RESULTS[(reader.id, kind)] = "FAIL: did not finish (see the test's error)"
    h5 = _h5(captures[kind])
    reference, reference_file = references(kind)
    if reader.here:
        got = reference
        problems = [f"{k}: {v}" for k, v in sorted(reference["errors"].items())]
        problems += compare_with_twinloop(captures[kind], reference)
        notes: list[str] = []
    elif reader.module == "h5dump":
        h5dump = shutil.which("h5dump")
        if h5dump is None:
            RESULTS[(reader.id, kind)] = "skip: no h5dump"
            pytest.skip("h5dump is not on PATH (Debian: apt-get install hdf5-tools)")
        got = h5dump_dump(h5dump, h5, reference, tmp_path)
        problems, notes = compare(reference, got)
    else:
        try:
            python = venv_python(reader)
        except pytest.skip.Exception as exc:
            RESULTS[(reader.id, kind)] = f"skip: {exc}"
            raise
        got = run_dump(python, reader.module, h5, tmp_path / "dump.json", reference_file)
        problems, notes = compare(reference, got)
    for pattern, text in reader.limits:
        known = [p for p in problems if re.search(pattern, p.split(": ")[0]) and text in p]
        if known:
            problems = [p for p in problems if p not in known]
            notes.append(f"{len(known)} object(s) past the reader's known limit: {text}")
    _record(reader, kind, got, record_property)
    if reader.library and not str(got["library"]).startswith(reader.library):
        problems.insert(
            0,
            f"reports {got['library']}, not {reader.library}*: the venv is not what the id "
            f"says (delete {VENV_ROOT / reader.id} to rebuild it)",
        )
    n_objects = len(reference["objects"]) + sum(
        len(o["attrs"]) for o in reference["objects"].values()
    )
    if problems:
        RESULTS[(reader.id, kind)] = f"FAIL: {len(problems)} problem(s): " + "; ".join(
            causes(problems)
        )
    else:
        RESULTS[(reader.id, kind)] = "pass" + (f" ({'; '.join(notes)})" if notes else "")
    listed = "\n".join(problems[:MAX_LISTED])
    more = f"\n... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    assert not problems, (
        f"{reader.id} ({got['library']}) on the {kind} dataset {h5}: {len(problems)} problem(s) "
        f"among {n_objects} objects and attributes; by cause:\n  "
        + "\n  ".join(causes(problems))
        + f"\nin full:\n{listed}{more}"
    )


# --- the checks that make the matrix trustworthy (fast) -----------------------------------------
def test_describe_makes_readers_comparable() -> None:
    d = dump_mod.describe
    fixed = np.array([b"ab", b"t0"], dtype="S8")
    assert d(np.array(["ab", "t0"], dtype=object), "S8")["sha256"] == d(fixed)["sha256"]
    narrow = d(np.array([b"ab", b"t0"], dtype="S2"), None, "|S8")["cast"]
    assert narrow["lossless"] and narrow["sha256"] == d(fixed)["sha256"]
    assert d(np.arange(3, dtype=">f4"))["sha256"] == d(np.arange(3, dtype="<f4"))["sha256"]
    assert d(np.array([True, False]))["sha256"] == d(np.array([1, 0], np.int8))["sha256"]
    widened = d(np.arange(3, dtype="<f8"), None, "<f4")
    assert widened["cast"]["lossless"]
    assert widened["cast"]["sha256"] == d(np.arange(3, dtype="<f4"))["sha256"]
    assert not d(np.array([0.1]), None, "<f4")["cast"]["lossless"]


def test_a_changed_value_is_found_and_named(tmp_path: Path) -> None:
    """One flipped bit in one dataset: each checker names that dataset and nothing else."""
    import h5py

    directory = tmp_path / "t" / "toy-v0"
    env = RecordEpisodes(ToyEnv(), directory)
    run_episodes(env, 2, seed=1)
    env.close()
    h5, changed = _h5(directory), tmp_path / "changed.hdf5"
    with h5py.File(h5, "r") as f:
        offset = f["episode_0/rewards"].id.get_offset()  # contiguous: the first float64
    data = bytearray(h5.read_bytes())
    data[offset + 6] ^= 0x10  # an exponent bit of rewards[0]
    changed.write_bytes(bytes(data))

    reference = run_dump(sys.executable, "h5py", h5, tmp_path / "ref.json")
    assert reference["errors"] == {}
    assert compare_with_twinloop(directory, reference) == []
    assert compare(reference, reference) == ([], [])
    got = run_dump(sys.executable, "h5py", changed, tmp_path / "got.json", tmp_path / "ref.json")
    problems, _ = compare(reference, got)
    assert len(problems) == 1 and problems[0].startswith("/episode_0/rewards: values differ")
    assert causes(problems) == ["/episode_*/rewards x1: values differ"]
    h5dump = shutil.which("h5dump")
    if h5dump is not None:  # the h5dump parser reads every object and sees the same change
        assert compare(reference, h5dump_dump(h5dump, h5, reference, tmp_path)) == ([], [])
        problems, _ = compare(reference, h5dump_dump(h5dump, changed, reference, tmp_path))
        assert len(problems) == 1 and problems[0].startswith("/episode_0/rewards: values")
