"""Checkpoint files are opened as regular files only: a FIFO or a device in place of a data
file or an index is an error naming the file and what it is, never a hang (issue 7 B2)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import gpuload
from gpuload.errors import CheckpointFileError, CheckpointFormatError, ShardReadError


@pytest.fixture(autouse=True)
def no_hang():
    """A hang is a failure after 20 s, not a stuck CI job."""

    def boom(*_):
        raise TimeoutError("hung: a checkpoint read blocked on a non-regular file")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
    gpuload.reset_default_graph()


def _ckpt(tmp_path):
    prefix = str(tmp_path / "m.ckpt")
    gpuload.save_checkpoint(prefix, {"w": np.arange(64, dtype=np.float32)})
    return prefix, prefix + ".data-00000-of-00001"


def _fifo_instead_of(path):
    os.unlink(path)
    os.mkfifo(path)


def test_shard_files_refuse_a_fifo(tmp_path):
    from gpuload.io.reader import ShardFiles

    path = str(tmp_path / "pipe")
    os.mkfifo(path)
    files = ShardFiles([path])
    with pytest.raises(ShardReadError, match="FIFO") as info:
        files.read_into(0, 0, [bytearray(16)])
    assert path in str(info.value) and isinstance(info.value, CheckpointFileError)
    files.close()


def test_shard_files_refuse_a_character_device(tmp_path):
    from gpuload.io.reader import ShardFiles

    files = ShardFiles(["/dev/zero"])
    with pytest.raises(ShardReadError, match="character device"):
        files.read_into(0, 0, [bytearray(16)])
    files.close()


def test_reader_with_data_file_replaced_by_fifo(tmp_path):
    prefix, data = _ckpt(tmp_path)
    reader = gpuload.load_checkpoint(prefix)
    _fifo_instead_of(data)
    with pytest.raises(CheckpointFileError, match="FIFO") as info:
        reader.get_tensor("w")
    assert data in str(info.value)
    reader.close()


def test_run_with_data_file_replaced_by_fifo(tmp_path):
    prefix, data = _ckpt(tmp_path)
    v = gpuload.get_variable("w", shape=[64], dtype="float32", device="/cpu:0")
    gpuload.init_from_checkpoint(prefix, {"w": v})
    _fifo_instead_of(data)
    with pytest.raises(CheckpointFileError, match="FIFO") as info:
        gpuload.global_variables_initializer().run()
    assert data in str(info.value)
    with pytest.raises(Exception, match="not initialized"):
        v.value()


def test_open_with_data_file_a_fifo(tmp_path):
    prefix, data = _ckpt(tmp_path)
    _fifo_instead_of(data)
    with pytest.raises(CheckpointFormatError, match="FIFO"):
        gpuload.load_checkpoint(prefix)


def test_index_table_fifo_is_refused(tmp_path):
    from gpuload.format.sstable import read_table_file

    path = str(tmp_path / "x.index")
    os.mkfifo(path)
    with pytest.raises(CheckpointFormatError, match="FIFO"):
        read_table_file(path)


def test_state_file_fifo_is_refused(tmp_path):
    from gpuload.format.state import get_checkpoint_state

    os.mkfifo(str(tmp_path / "checkpoint"))
    with pytest.raises(CheckpointFormatError, match="FIFO"):
        get_checkpoint_state(str(tmp_path))
