"""A restricted unpickler for the public MER feature pickles.

``pickle.load`` runs whatever callable a file names; a feature file from the internet must never
do that. This unpickler resolves only the globals these files need — numpy's array and scalar
reconstruction, numpy dtypes, and builtin containers — and refuses everything else before it can
be called.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

# (module, name) pairs a feature pickle may reference.
_BUILTINS = ("set", "frozenset", "list", "dict", "tuple", "bytes", "bytearray", "complex")
ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5 arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    # protocols 0-2 store bytes (numpy's raw buffers) as _codecs.encode(text, "latin1")
    ("_codecs", "encode"),
}) | {(module, name) for module in ("builtins", "__builtin__") for name in _BUILTINS}


class UnsafePickleError(pickle.UnpicklingError):
    """The file references a global outside the allow-list; nothing was called."""


class FeatureUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Python-2 module names are checked as written; the base class maps them afterwards.
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refused to load {module}.{name}: feature files may only contain numpy arrays, "
                f"numpy scalars and builtin containers (the file may be malicious or not a "
                f"feature file)")
        return super().find_class(module, name)


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` with the allow-list (python-2 pickles decoded as latin1)."""
    return FeatureUnpickler(io.BytesIO(data), encoding="latin1", fix_imports=True).load()
