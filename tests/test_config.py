"""The one config object: defaults, environment variables, validation, scoped changes."""

import os

import pytest

from gpuload import config
from gpuload.config import Config, parse_size


def test_sizes_and_env():
    assert parse_size("64MiB") == 64 << 20 and parse_size("1G") == 1 << 30 and parse_size(4096) == 4096
    c = Config.from_env(
        {
            "GPULOAD_RING_BYTES": "96MiB",
            "GPULOAD_CHUNK_BYTES": "8MiB",
            "GPULOAD_READER_THREADS": "3",
            "GPULOAD_VERIFY_CRC": "off",
            "GPULOAD_DIRECT_IO": "1",
        }
    )
    assert (c.ring_bytes, c.chunk_bytes, c.reader_threads, c.verify_crc, c.direct_io) == (
        96 << 20,
        8 << 20,
        3,
        False,
        True,
    )
    assert c.ring_slots == 12
    assert Config().reader_threads == max(1, min(4, os.cpu_count() or 1))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"chunk_bytes": 1000}, "multiple of 4096"),
        ({"ring_bytes": "64MiB", "chunk_bytes": "32MiB"}, "at least 3 chunks"),
        ({"reader_threads": 0}, "reader_threads"),
        ({"verify_crc": "maybe"}, "not a boolean"),
        ({"ring_bytes": "lots"}, "not a size"),
    ],
)
def test_bad_values_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        Config(**kw)


def test_set_as_context_restores():
    before = config.get()
    with config.set(verify_crc=not before.verify_crc) as c:
        assert c.verify_crc is not before.verify_crc and config.get() is c
    assert config.get() == before
