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
``reader_threads``    ``GPULOAD_READER_THREADS`` min(4, CPUs)  up to 2 MiB each: loading into host memory,
                                                               a reader streams chunks through its own
                                                               window buffer (counted in ``ring_bytes``
                                                               of ``LoadStats``)
``verify_crc``        ``GPULOAD_VERIFY_CRC``     on            none; reads whole stored entries so that
                                                               their CRC32C can be checked
``direct_io``         ``GPULOAD_DIRECT_IO``      off           none; ``O_DIRECT`` reads bypass the page cache
``gap_bytes``         ``GPULOAD_GAP_BYTES``      1 MiB         none; holes smaller than this between
                                                               needed byte ranges are read through
``progress``          ``GPULOAD_PROGRESS``       off           none; a tqdm bar on stderr during loads
``communicator``      (none: set in code)        None          none; an mpi4py communicator makes every
                                                               initializer run collective over its ranks
                                                               (see :mod:`gpuload.distributed`)
``collective_timeout`` ``GPULOAD_COLLECTIVE_``   300 s         none; the longest any rank waits for the
                      ``TIMEOUT``                              others in a collective load before raising
====================  =========================  ============  ==========================================

Sizes accept suffixes (``64MiB``, ``1GiB``, ``512K``). Use :func:`get` to read the active
configuration and :func:`set` to change it, globally or for a ``with`` block::

    gpuload.config.set(reader_threads=2)            # process-wide default, stays
    with gpuload.config.set(ring_bytes="1GiB", verify_crc=False):
        op.run()                                    # this thread / asyncio task only

A ``with`` block is context-local (``contextvars``): it changes nothing for other threads
or tasks, and its exit restores exactly what its entry replaced, whatever order blocks in
different threads end in.
"""

from __future__ import annotations

import contextvars
import dataclasses
import dis
import os
import re
import sys
import threading

__all__ = ["Config", "get", "set", "override", "parse_size"]

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
    # An mpi4py communicator: no environment variable, never compared or hashed (MPI handles
    # are not values), and gpuload never imports mpi4py unless one is set.
    communicator: object = dataclasses.field(default=None, compare=False, hash=False, metadata={"env": False})
    collective_timeout: float = 300.0

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
        object.__setattr__(self, "collective_timeout", float(self.collective_timeout))
        if not self.collective_timeout > 0:
            raise ValueError(f"collective_timeout must be > 0 seconds, got {self.collective_timeout}")
        if self.communicator is not None and not (
            hasattr(self.communicator, "Get_rank") and hasattr(self.communicator, "Get_size")
        ):
            raise TypeError(
                f"communicator must be an mpi4py communicator (e.g. MPI.COMM_WORLD) or None, "
                f"got {type(self.communicator).__name__}"
            )

    @property
    def ring_slots(self) -> int:
        """Number of chunk-sized slots in the staging ring."""
        return self.ring_bytes // self.chunk_bytes

    @classmethod
    def from_env(cls, environ=None) -> Config:
        """Build a config from ``GPULOAD_*`` environment variables, defaults elsewhere."""
        environ = os.environ if environ is None else environ
        kwargs, keys = {}, {}
        for f in dataclasses.fields(cls):
            if f.metadata.get("env") is False:
                continue
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
_global: Config | None = None  # the process-wide default
#: The ``with config.set(...)`` blocks active in this context (thread / asyncio task),
#: innermost last. Context-local so that one thread's block never changes another's load.
_layers: contextvars.ContextVar[tuple] = contextvars.ContextVar("gpuload_config_layers", default=())


def _default() -> Config:
    global _global
    with _lock:
        if _global is None:
            _global = Config.from_env()
        return _global


def get() -> Config:
    """The active configuration: the process-wide default with this context's ``with`` blocks applied.

    The default is built from the environment on first use.
    """
    return _resolve(_layers.get())


def _resolve(layers: tuple) -> Config:
    base = _default()
    if not layers:
        return base
    top = layers[-1]
    cached = top.cache
    # Valid only for the same default AND the same outer blocks: one block object may be
    # entered under different outer blocks (reused, nested, or in several threads).
    if cached is not None and cached[0] is base and cached[1] == layers:
        return cached[2]
    merged = {}
    for layer in layers:
        merged.update(layer.changes)
    cfg = dataclasses.replace(base, **merged)
    top.cache = (base, layers, cfg)  # one tuple: readers in other tasks see the old or the new triple
    return cfg


class _Setting:
    """What :func:`set` returns: already applied as a plain call; scoped when entered."""

    def __init__(self, changes: dict, applied: tuple | None):
        self.changes = changes
        self.cache = None
        self._applied = applied  # (previous default, new default) when the default was changed
        # One token per active entry: the same object may be entered again, nested, or from
        # several threads / tasks at once, each entry restoring what it replaced.
        self._tokens: list[contextvars.Token] = []
        self._tokens_lock = threading.Lock()

    def __enter__(self) -> Config:
        global _global
        if self._applied is not None:
            # Used as ``with`` where the call could not be recognised as one (e.g. through
            # ExitStack.enter_context): take the change back from the process default unless
            # someone has changed the default since, and apply it to this context only.
            previous, new = self._applied
            with _lock:
                if _global is new:
                    _global = previous
            self._applied = None
        layers = _layers.get() + (self,)
        cfg = _resolve(layers)  # before the context changes: an interrupt cannot leave it half-entered
        with self._tokens_lock:
            self._tokens.append(_layers.set(layers))
        return cfg

    def __exit__(self, *exc):
        with self._tokens_lock:
            # The newest entry made in this context is the innermost one here; a token made
            # in another context (thread / task) refuses to reset with ValueError.
            for i in range(len(self._tokens) - 1, -1, -1):
                try:
                    _layers.reset(self._tokens[i])  # exactly the layers this entry replaced
                except ValueError:
                    continue
                del self._tokens[i]
                return False
            if self._tokens:
                self._tokens.pop()  # exited in another context than it was entered in
        layers = _layers.get()
        for i in range(len(layers) - 1, -1, -1):
            if layers[i] is self:
                _layers.set(layers[:i] + layers[i + 1 :])
                break
        return False


#: (code object, instruction offset) -> whether the call there is a ``with`` item.
_with_sites: dict = {}


def _called_as_with_item(frame) -> bool:
    """Whether the call being made in ``frame`` is the context expression of a ``with``.

    Recognised from the next instruction (``SETUP_WITH`` up to 3.10, ``BEFORE_WITH`` in
    3.11-3.13, ``COPY; LOAD_SPECIAL`` from 3.14). A miss is harmless: the block then
    takes the change back from the process default when entered (see ``_Setting``); a hit
    means the process default is never touched, so no other thread can see the change
    even between the call and the block's start.
    """
    if frame is None:
        return False
    key = (frame.f_code, frame.f_lasti)
    hit = _with_sites.get(key)
    if hit is None:
        after = [i.opname for i in dis.get_instructions(frame.f_code) if i.offset > frame.f_lasti][:2]
        hit = bool(after) and (after[0] in ("SETUP_WITH", "BEFORE_WITH") or after == ["COPY", "LOAD_SPECIAL"])
        if len(_with_sites) > 4096:
            _with_sites.clear()
        _with_sites[key] = hit
    return hit


def set(**changes):
    """Change settings for the whole process, or, as ``with gpuload.config.set(...):``, for a block.

    * Called as a plain function, the change goes to the process-wide default and stays:
      every thread that is not inside a block overriding the same setting sees it.
    * Used as a ``with`` block, the change applies only inside the block and only in the
      current context (the thread, or the asyncio task), and on exit the context gets back
      exactly what it had, whatever other threads or blocks did meanwhile. The process
      default is not touched.
    * A plain call inside a block changes the process default; inside the block the block's
      own settings still win for the keys it names, and the rest follow the new default.

    Raises
    ------
    ValueError
        A value is invalid (checked against the configuration active at the call).
    TypeError
        An unknown setting.
    """
    global _global
    dataclasses.replace(get(), **changes)  # validate now, at the caller's line
    if _called_as_with_item(sys._getframe(1)):
        return _Setting(changes, None)
    with _lock:
        previous = _global if _global is not None else Config.from_env()
        new = dataclasses.replace(previous, **changes)
        _global = new
    return _Setting(changes, (previous, new))


def override(**changes):
    """A context manager applying ``changes`` to the current thread/task only (``with`` only).

    The same as ``with gpuload.config.set(...)``, for code that enters the block
    indirectly (``ExitStack.enter_context``) and wants the process default never touched.
    """
    dataclasses.replace(get(), **changes)
    return _Setting(changes, None)
