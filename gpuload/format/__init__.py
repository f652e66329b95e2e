"""Bytes on disk -> entries: the TensorBundle V2 checkpoint format, without TensorFlow.

Imports NumPy, ml_dtypes and google_crc32c only (never CuPy). Main names:

- :class:`Bundle`, :class:`TensorEntry`, :class:`StoredPiece`: one opened checkpoint prefix
  (the index in :mod:`~gpuload.format.index`, the reads in :mod:`~gpuload.format.bundle`,
  string tensors in :mod:`~gpuload.format.strings`, the one data-file reader
  :class:`~gpuload.format.files.ShardFiles`).
- :func:`resolve_prefix`, :func:`latest_checkpoint`: directories and state files.
- :class:`CheckpointReader`, :func:`load_checkpoint`, :func:`list_variables`,
  :func:`load_variable`: the ``tf.train`` reading API.
- :func:`save_checkpoint`: writing.
- :func:`crc32c`, :func:`crc32c_combine`, :func:`mask`, :func:`unmask`.
"""

from gpuload.format.bundle import Bundle
from gpuload.format.crc import crc32c, crc32c_combine, mask, unmask
from gpuload.format.dtypes import as_numpy_dtype, numpy_dtype, tf_code, tf_name
from gpuload.format.index import StoredPiece, TensorEntry, data_filename
from gpuload.format.keys import decode_tensor_name_slice, encode_tensor_name_slice
from gpuload.format.reader import (
    CheckpointReader,
    latest_checkpoint,
    list_variables,
    load_checkpoint,
    load_variable,
)
from gpuload.format.state import resolve_prefix, update_checkpoint_state
from gpuload.format.writer import save_checkpoint

__all__ = [
    "Bundle",
    "StoredPiece",
    "TensorEntry",
    "data_filename",
    "crc32c",
    "crc32c_combine",
    "mask",
    "unmask",
    "as_numpy_dtype",
    "numpy_dtype",
    "tf_code",
    "tf_name",
    "decode_tensor_name_slice",
    "encode_tensor_name_slice",
    "CheckpointReader",
    "latest_checkpoint",
    "list_variables",
    "load_checkpoint",
    "load_variable",
    "resolve_prefix",
    "update_checkpoint_state",
    "save_checkpoint",
]
