"""Dump what one HDF5 reader sees in a file: every group, dataset and attribute, as digests.

Standalone on purpose: it runs inside throw-away virtual environments that hold an old h5py,
PyTables or pyfive (down to Python 3.6 and numpy 1.19), so it imports nothing of twinloop and
uses no syntax newer than Python 3.6.

    python dump.py READER FILE [--out OUT.json] [--expect REFERENCE.json]

``READER`` is ``h5py``, ``tables`` or ``pyfive``. The JSON written has:

* ``reader``, ``reader_version``, ``library`` (the libhdf5 a reader uses, e.g. ``HDF5
  1.10.4``), ``python``, ``numpy``;
* ``objects``: absolute path -> ``{"kind": "group"|"dataset", "attrs": {name: value}}``, where a
  dataset and every attribute value also carry ``dtype`` (numpy ``str``, little-endian),
  ``shape``, ``nbytes``, ``sha256`` of the values' little-endian bytes and ``head`` (the first
  few values, for error messages);
* ``errors``: what could not be read -> ``"ExceptionType: message"``. Keys are an object path,
  ``path@attribute``, or ``path/*`` when a group's members could not be listed. One object
  that a reader cannot read never stops the walk.

Values are made comparable across readers by converting them, not by trusting a reader's
types: arrays become C-contiguous little-endian; text read as ``str`` or ``object`` becomes
fixed-width UTF-8 bytes (``S<n>``, ``n`` from the reader's declared dtype when it has one), so a
fixed-length HDF5 string hashes the same bytes whichever reader returned it. Booleans stored as
an HDF5 enum come back as ``bool`` (h5py) or ``int8`` (PyTables, pyfive); both hash the same
one-byte 0/1 values, and the caller decides whether those dtypes count as equal.

With ``--expect`` (another dump of the same file, the reference), a value whose dtype differs
from the reference's also gets ``cast``: its digest after conversion to the reference dtype and
whether that conversion is lossless. A reader that widens ``float32`` to ``float64`` (h5py 2.7
does) has read the right numbers; ``cast`` lets the caller tell that from wrong numbers.
"""

import argparse
import hashlib
import json
import platform
import sys
import traceback
import warnings

HEAD = 6


def _error_text(exc):
    text = str(exc).strip().replace("\n", " ")[:400]
    if not text:  # a bare assert: say where it is and what it checks
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            frame = frames[-1]
            parts = frame.filename.replace("\\", "/").split("/")
            text = "at {}:{}: {}".format("/".join(parts[-2:]), frame.lineno, frame.line)
    return f"{type(exc).__name__}: {text}"


def _as_bytes(x):
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode("utf-8")
    raise TypeError(f"cannot store {x!r} ({type(x).__name__}) as text")


def canonical(value, declared=None):
    """``value`` as a C-contiguous little-endian numpy array (text as fixed-width bytes).

    Args:
        value: What a reader returned (array, numpy scalar, Python scalar, str, bytes).
        declared: The dtype the reader declares for the object, if it has one; gives the
            width of fixed-length text.

    Returns:
        The canonical array.
    """
    import numpy as np

    a = np.asarray(value)
    if a.dtype.kind in "OU":
        width = 0
        if declared is not None and np.dtype(declared).kind == "S":
            width = np.dtype(declared).itemsize
        items = [_as_bytes(x) for x in a.ravel().tolist()]
        width = max([width, 1] + [len(x) for x in items])
        a = np.array(items, dtype=f"S{width}").reshape(a.shape)
    if a.dtype.kind == "V" or a.dtype.names is not None:
        raise TypeError(f"compound or opaque dtype {a.dtype} is not handled")
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)


def _head(a):
    out = []
    for x in a.ravel()[:HEAD].tolist():
        if isinstance(x, bytes):
            x = x.decode("latin-1")
        elif isinstance(x, float) and x != x:
            x = "nan"
        elif isinstance(x, float) and x in (float("inf"), float("-inf")):
            x = str(x)
        out.append(x)
    return out


def _digest(a):
    return hashlib.sha256(a.tobytes()).hexdigest()


def describe(value, declared=None, expected=None):
    """``{dtype, shape, nbytes, sha256, head}`` of a value (see :func:`canonical`).

    Args:
        value: What the reader returned.
        declared: The reader's own dtype for the object (gives fixed text widths).
        expected: The reference dtype; when the value's differs, ``cast`` is added.

    Returns:
        The description.
    """
    import numpy as np

    a = canonical(value, declared)
    out = {
        "dtype": a.dtype.str,
        "shape": list(a.shape),
        "nbytes": int(a.nbytes),
        "sha256": _digest(a),
        "head": _head(a),
    }
    if expected is not None and np.dtype(expected) != a.dtype:
        try:
            b = np.ascontiguousarray(a.astype(np.dtype(expected)))
            back = b.astype(a.dtype)
            out["cast"] = {
                "dtype": b.dtype.str,
                "sha256": _digest(b),
                "lossless": back.tobytes() == a.tobytes(),
            }
        except Exception as exc:
            out["cast"] = {"dtype": str(expected), "error": _error_text(exc)}
    return out


def _join(path, name):
    return "/" + name if path == "/" else path + "/" + name


class Walk:
    """Collects objects and per-object errors while one reader walks a file."""

    def __init__(self, expect=None):  # noqa: D107
        self.objects = {}
        self.errors = {}
        self.expect = expect or {}

    def expected(self, key):
        """The reference dtype of ``path`` or ``path@attribute``, if a reference was given."""
        return self.expect.get(key)

    def value(self, path, value, declared):
        """Describe a dataset's value (see :func:`describe`)."""
        return describe(value, declared, self.expected(path))

    def fail(self, key, exc):
        """Record that ``key`` could not be read."""
        self.errors[key] = _error_text(exc)

    def attrs(self, path, names, get, declared):
        """Describe the attributes ``names`` of ``path`` through ``get(name)``."""
        out = {}
        for name in names:
            try:
                out[name] = describe(get(name), declared(name), self.expected(path + "@" + name))
            except Exception as exc:
                self.fail(path + "@" + name, exc)
        return out


# --- h5py -------------------------------------------------------------------------------------
def walk_h5py(filename, walk, info):
    """Walk with h5py (any release from 2.7 on); ``info`` gets the versions it uses."""
    import h5py

    info["reader_version"] = h5py.__version__
    info["library"] = "HDF5 " + h5py.version.hdf5_version

    def attr_dtype(obj, name):
        try:
            return obj.attrs.get_id(name).dtype
        except Exception:
            return None

    def attributes(obj, path):
        try:
            names = sorted(obj.attrs.keys())
        except Exception as exc:
            walk.fail(path + "@*", exc)
            return {}
        return walk.attrs(path, names, lambda n: obj.attrs[n], lambda n: attr_dtype(obj, n))

    def visit(group, path):
        walk.objects[path] = {"kind": "group", "attrs": attributes(group, path)}
        try:
            names = sorted(group.keys())
        except Exception as exc:
            walk.fail(path + "/*", exc)
            return
        for name in names:
            child = _join(path, name)
            try:
                obj = group[name]
            except Exception as exc:
                walk.fail(child, exc)
                continue
            if isinstance(obj, h5py.Group):
                visit(obj, child)
            elif isinstance(obj, h5py.Dataset):
                rec = {"kind": "dataset", "attrs": attributes(obj, child)}
                try:
                    rec.update(walk.value(child, obj[()], obj.dtype))
                except Exception as exc:
                    walk.fail(child, exc)
                    continue
                walk.objects[child] = rec
            else:
                walk.fail(child, TypeError("unknown object type " + type(obj).__name__))

    with h5py.File(filename, "r") as f:
        visit(f, "/")


# --- PyTables ---------------------------------------------------------------------------------
def walk_tables(filename, walk, info):
    """Walk with PyTables; a node it maps to ``UnImplemented`` counts as unreadable."""
    import tables

    info["reader_version"] = tables.__version__
    info["library"] = "HDF5 " + tables.hdf5_version

    def attributes(node, path):
        attrset = node._v_attrs
        try:
            names = sorted(attrset._f_list("all"))
        except Exception as exc:
            walk.fail(path + "@*", exc)
            return {}
        return walk.attrs(path, names, lambda n: getattr(attrset, n), lambda n: None)

    def visit(group, path):
        walk.objects[path] = {"kind": "group", "attrs": attributes(group, path)}
        try:
            names = sorted(group._v_children.keys())
        except Exception as exc:
            walk.fail(path + "/*", exc)
            return
        for name in names:
            child = _join(path, name)
            try:
                node = group._f_get_child(name)
            except Exception as exc:
                walk.fail(child, exc)
                continue
            if isinstance(node, tables.Group):
                visit(node, child)
            elif isinstance(node, tables.UnImplemented):
                walk.fail(child, TypeError("PyTables maps it to UnImplemented (cannot read it)"))
            elif isinstance(node, tables.Leaf):
                rec = {"kind": "dataset", "attrs": attributes(node, child)}
                try:
                    rec.update(walk.value(child, node.read(), getattr(node, "dtype", None)))
                except Exception as exc:
                    walk.fail(child, exc)
                    continue
                walk.objects[child] = rec
            else:
                walk.fail(child, TypeError("unknown node type " + type(node).__name__))

    f = tables.open_file(filename, "r")
    try:
        visit(f.root, "/")
    finally:
        f.close()


# --- pyfive -----------------------------------------------------------------------------------
def walk_pyfive(filename, walk, info):
    """Walk with pyfive (pure Python; no libhdf5)."""
    import pyfive

    info["reader_version"] = getattr(pyfive, "__version__", "?")
    info["library"] = "none (pure Python)"

    def attributes(obj, path):
        try:
            attrs = obj.attrs
            names = sorted(attrs.keys())
        except Exception as exc:
            walk.fail(path + "@*", exc)
            return {}
        return walk.attrs(path, names, lambda n: attrs[n], lambda n: None)

    def visit(group, path):
        walk.objects[path] = {"kind": "group", "attrs": attributes(group, path)}
        try:
            names = sorted(group.keys())
        except Exception as exc:
            walk.fail(path + "/*", exc)
            return
        for name in names:
            child = _join(path, name)
            try:
                obj = group[name]
            except Exception as exc:
                walk.fail(child, exc)
                continue
            if isinstance(obj, pyfive.Group):
                visit(obj, child)
            elif isinstance(obj, pyfive.Dataset):
                rec = {"kind": "dataset", "attrs": attributes(obj, child)}
                try:
                    rec.update(walk.value(child, obj[...], getattr(obj, "dtype", None)))
                except Exception as exc:
                    walk.fail(child, exc)
                    continue
                walk.objects[child] = rec
            else:
                walk.fail(child, TypeError("unknown object type " + type(obj).__name__))

    f = pyfive.File(filename)
    try:
        visit(f, "/")
    finally:
        close = getattr(f, "close", None)
        if close is not None:
            close()


READERS = {"h5py": walk_h5py, "tables": walk_tables, "pyfive": walk_pyfive}


def expected_dtypes(reference):
    """``{path or path@attribute: dtype}`` of a reference dump."""
    out = {}
    for path, rec in reference.get("objects", {}).items():
        if "dtype" in rec:
            out[path] = rec["dtype"]
        for name, attr in rec.get("attrs", {}).items():
            out[path + "@" + name] = attr["dtype"]
    return out


def dump(reader, filename, reference=None):
    """Walk ``filename`` with ``reader`` and return the JSON-ready result (never raises).

    Args:
        reader: ``h5py``, ``tables`` or ``pyfive``.
        filename: The HDF5 file.
        reference: Another dump of the same file, whose dtypes ``cast`` converts to.

    Returns:
        The dump (see the module docstring).
    """
    import numpy as np

    walk = Walk(expected_dtypes(reference or {}))
    result = {
        "reader": reader,
        "reader_version": None,
        "library": None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "file": filename,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTables warns about files it did not write
        try:
            READERS[reader](filename, walk, result)
        except Exception as exc:
            walk.fail("/", exc)  # the file did not open, or the reader did not import
    result["objects"] = walk.objects
    result["errors"] = walk.errors
    return result


def main(argv=None):
    """Command line: ``dump.py READER FILE [--out OUT.json]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reader", choices=sorted(READERS), help="which library reads the file")
    parser.add_argument("file", help="the HDF5 file to walk")
    parser.add_argument("--out", help="write the JSON here (default: standard output)")
    parser.add_argument(
        "--expect", help="a reference dump of the same file: add lossless-cast digests to it"
    )
    args = parser.parse_args(argv)
    reference = None
    if args.expect:
        with open(args.expect) as f:
            reference = json.load(f)
    text = json.dumps(dump(args.reader, args.file, reference), indent=1, sort_keys=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
