"""A restricted unpickler for weight archives: NumPy arrays, dtypes, numbers and plain containers, nothing else.

Published metric weights (the LPIPS and I3D networks) come as pickled dicts of NumPy arrays. Plain ``pickle``
would call whatever a file names, so a crafted archive could run code; this reader resolves only the few globals
that rebuilding arrays needs and refuses every other one before anything is called.
"""
from __future__ import annotations

import collections
import io
import os
from collections.abc import Mapping
import pickle
from typing import Any, BinaryIO

import numpy as np

from pyro_cwvae.errors import UserError
from pyro_cwvae.files.reading import printable, read_bytes


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (latin-1 text); no other codec is reachable."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not how NumPy pickles bytes")
    return text.encode("latin1")


# NumPy pickles arrays through these functions (1.x under numpy.core, 2.x under numpy._core).
_reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]
_scalar = np.float32(0).__reduce__()[0]
_frombuffer = np.zeros(0).__reduce_ex__(5)[0]

ADMITTED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},  # NumPy numbers
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},  # protocol 5
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # Protocols 0-2 name the builtins module as Python 2 did.
    **{(module, "set"): set for module in ("builtins", "__builtin__")},
    **{(module, "frozenset"): frozenset for module in ("builtins", "__builtin__")},
}


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``ADMITTED``; any other reference fails before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ADMITTED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a weight archive may not hold") from None


MAX_BYTES = 200 << 20
"""A weight archive larger than this is refused before it is read (the real ones are 10 and 51 MB)."""
MAX_DEPTH = 32
"""Nesting deeper than this is refused (the real archives nest dicts 5 deep)."""
MAX_OBJECTS = 1_000_000
"""Distinct containers and arrays one archive may hold (the real ones: a few hundred)."""


def load(source: BinaryIO | str | os.PathLike, label: str | None = None) -> Any:
    """Unpickle a path or an open binary file, admitting arrays only; UserError naming ``label`` otherwise."""
    if not isinstance(source, (str, os.PathLike)):
        return _unpickle(source, label or "<stream>")
    label = label or str(source)
    data = read_bytes(source, MAX_BYTES, "weight archive")
    return _unpickle(io.BytesIO(data), label)


def _unpickle(file: BinaryIO, label: str) -> Any:
    label = printable(label)
    try:
        value = ArraysOnlyUnpickler(file).load()
    except Exception as error:  # a crafted or damaged stream can fail in any way: name the file, keep one line
        raise UserError(f"weight archive {label} is refused: {printable(' '.join(str(error).split()))}") from error
    refuse_objects(value, label)
    return value


def refuse_objects(value: Any, label: str) -> None:
    """Weights are numbers: an array of Python objects (whose items pickle could rebuild) is refused wherever it is,
    in containers, dict keys, instance attributes or dtype metadata; so is nesting deeper than ``MAX_DEPTH`` or more
    than ``MAX_OBJECTS`` objects. Each object is visited once, however often it is referred to."""
    seen: set[int] = set()
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if id(item) in seen or isinstance(item, (str, bytes, int, float, complex, bool, type(None))):
            continue
        seen.add(id(item))
        if depth > MAX_DEPTH or len(seen) > MAX_OBJECTS:
            why = f"nested deeper than {MAX_DEPTH}" if depth > MAX_DEPTH else f"more than {MAX_OBJECTS:,} objects"
            raise UserError(f"weight archive {label} is refused: it holds {why}")
        if isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise UserError(f"weight archive {label} is refused: it holds an array of Python objects")
        stack.extend((child, depth + 1) for child in _children(item))


def _children(item: Any) -> list:
    """What ``item`` holds: items, keys and values, instance attributes, and the parts of a dtype."""
    children = list(vars(item).values()) if hasattr(item, "__dict__") else []
    if isinstance(item, Mapping):  # dicts, and a dtype's metadata
        children += [*item.keys(), *item.values()]
    elif isinstance(item, (list, tuple, set, frozenset)):
        children += list(item)
    elif isinstance(item, (np.ndarray, np.generic)):
        children.append(item.dtype)
    elif isinstance(item, np.dtype):
        children += [item.metadata, *(item.fields or {}).values(), item.subdtype]
    return children
