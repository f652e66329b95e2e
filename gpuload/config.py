"""One configuration object for every knob of the loader.

Each field has a default, an environment variable (read once, when the process first asks
for the configuration) and a stated memory cost:

====================  =========================  ============  ==========================================
field                 environment variable       default       memory cost
====================  =========================  ============  ==========================================
``ring_bytes``        ``GPULOAD_RING_BYTES``     256 MiB       host staging (pinned on a GPU): at most this,
                                                               plus the same again on each GPU loaded into
``chunk_bytes``       ``GPULOAD_CHUNK_BYTES``    32 MiB        none by itself: the ring holds
                                                               ``ring_bytes // chunk_bytes`` slots (>= 3)
``reader_threads``    ``GPULOAD_READER_THREADS`` min(4, CPUs)  none (threads reading into ring slots)
``verify_crc``        ``GPULOAD_VERIFY_CRC``     on            none; reads whole stored entries so that
                                                               their CRC32C can be checked
``direct_io``         ``GPULOAD_DIRECT_IO``      off           none; ``O_DIRECT`` reads bypass the page cache
``gap_bytes``         ``GPULOAD_GAP_BYTES``      1 MiB         none; holes smaller than this between
                                                               needed byte ranges are read through
``progress``          ``GPULOAD_PROGRESS``       off           none; a tqdm bar on stderr during loads
====================  =========================  ============  ==========================================

Sizes accept suffixes (``64MiB``, ``1GiB``, ``512K``). Use :func:`get` to read the active
configuration and :func:`set` to change it, globally or for a ``with`` block::

    with gpuload.config.set(ring_bytes="1GiB", verify_crc=False):
        op.run()
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import threading

__all__ = ["Config", "get", "set", "parse_size"]

_MIB = 1 << 20

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value) -> int:
    """Parse ``64MiB``, ``1G``, ``4096`` into a byte count (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (expected e.g. 4096, 64MiB, 1GiB)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r} (expected 1/0, true/false, on/off)")


@dataclasses.dataclass(frozen=True)
class Config:
    """The loader's settings. See the module docstring for each field's memory cost."""

    ring_bytes: int = 256 * _MIB
    chunk_bytes: int = 32 * _MIB
    # More readers than cores only adds GIL hand-offs (2 cores: 2 threads 10.0 GB/s, 4 threads 9.0).
    reader_threads: int = dataclasses.field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    verify_crc: bool = True
    direct_io: bool = False
    gap_bytes: int = 1 * _MIB
    progress: bool = False

    def __post_init__(self):
        for name in ("ring_bytes", "chunk_bytes", "gap_bytes"):
            object.__setattr__(self, name, parse_size(getattr(self, name)))
        for name in ("verify_crc", "direct_io", "progress"):
            object.__setattr__(self, name, _parse_bool(getattr(self, name)))
        object.__setattr__(self, "reader_threads", int(self.reader_threads))
        if self.chunk_bytes < 4096 or self.chunk_bytes % 4096:
            raise ValueError(f"chunk_bytes must be a positive multiple of 4096, got {self.chunk_bytes}")
        if self.ring_bytes < 3 * self.chunk_bytes:
            raise ValueError(
                f"ring_bytes ({self.ring_bytes}) must hold at least 3 chunks of chunk_bytes "
                f"({self.chunk_bytes}) so that reading, copying and slicing overlap"
            )
        if self.reader_threads < 1:
            raise ValueError(f"reader_threads must be >= 1, got {self.reader_threads}")
        if self.gap_bytes < 0:
            raise ValueError(f"gap_bytes must be >= 0, got {self.gap_bytes}")

    @property
    def ring_slots(self) -> int:
        """Number of chunk-sized slots in the staging ring."""
        return self.ring_bytes // self.chunk_bytes

    @classmethod
    def from_env(cls, environ=None) -> "Config":
        """Build a config from ``GPULOAD_*`` environment variables, defaults elsewhere."""
        environ = os.environ if environ is None else environ
        kwargs, keys = {}, {}
        for f in dataclasses.fields(cls):
            key = "GPULOAD_" + f.name.upper()
            if key in environ:
                kwargs[f.name] = environ[key]
                keys[f.name] = key
        try:
            return cls(**kwargs)
        except ValueError as e:
            # Name the variable(s) at fault: the message names the field, or quotes the value.
            msg = str(e)
            at_fault = [k for n, k in keys.items() if n in msg or repr(kwargs[n]) in msg] or list(keys.values())
            raise ValueError(f"{', '.join(at_fault)}: {msg}") from e


_lock = threading.Lock()
_active: Config | None = None


def get() -> Config:
    """The active configuration (built from the environment on first use)."""
    global _active
    with _lock:
        if _active is None:
            _active = Config.from_env()
        return _active


@contextlib.contextmanager
def _restore(previous: Config):
    global _active
    try:
        yield get()
    finally:
        with _lock:
            _active = previous


def set(**changes):
    """Change settings globally; also usable as ``with gpuload.config.set(...):``.

    Returns a context manager that, when used in a ``with`` block, restores the previous
    configuration on exit. Called as a plain function, the change stays.
    """
    global _active
    previous = get()
    new = dataclasses.replace(previous, **changes)
    with _lock:
        _active = new
    return _restore(previous)
