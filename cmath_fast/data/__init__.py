"""Data: safe readers for the public IEMOCAP/MELD feature files, the native safetensors format,
synthetic data in the same schema, and batching."""

from .dataset import (Batch, DataError, Dialogue, MERData, collate, data_fingerprint, describe_fingerprint,
                      iterate_batches)
from .loaders import load_features, parse_pickle
from .native import load_native, save_native
from .safe_pickle import UnsafePickleError, safe_loads
from .synthetic import PRESETS as SYNTH_PRESETS
from .synthetic import make_synthetic

__all__ = [
    "Batch", "DataError", "Dialogue", "MERData", "collate", "data_fingerprint", "describe_fingerprint",
    "iterate_batches", "load_features",
    "parse_pickle", "load_native", "save_native", "UnsafePickleError", "safe_loads",
    "SYNTH_PRESETS", "make_synthetic",
]
