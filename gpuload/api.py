"""``gpuload.load``: checkpoint tensors (or boxes of them) into any framework's arrays.

The one way into the data path: the TF1 variable store's initializer is a client of
:func:`load` like any PyTorch, JAX or CuPy program. A request names a checkpoint tensor,
optionally a box of it (rows, columns, any N-D slice), and a target:

* a :class:`Spec` (shape, dtype, device): gpuload allocates the destination, a NumPy
  array on the CPU, a CuPy array on a GPU; with a ``torch.device`` a torch tensor, with a
  ``jax.Device`` a JAX array (gpuload's own buffer handed over through DLPack);
* an existing array, filled **in place** (no copy: the readers or the kernels write into
  its memory): a NumPy or CuPy array, or a PyTorch tensor on any device (its memory seen
  through ``__array_interface__`` / DLPack on the CPU and ``__cuda_array_interface__`` on a
  GPU). JAX arrays are immutable: ask for them with a :class:`Spec` instead.

Dtypes follow ``init_from_checkpoint``'s rules: the target's dtype must be the stored one
unless ``allow_cast=True`` (then floating dtypes convert into each other: the cast table
of :mod:`gpuload.backend.contract`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Imported here, not inside load(): a load's clock starts at the call and imports are not load time.
import gpuload.backend.host as _host  # the CPU backend, built by backend_for
from gpuload import config as config_mod
from gpuload.backend.contract import converts
from gpuload.backend.placement import backend_for, canonical_device
from gpuload.devices import CPU_NAME, Device
from gpuload.errors import ArgumentTypeError, DeviceUnavailableError, InvalidArgumentError, TargetError
from gpuload.format import dtypes as _dt
from gpuload.format.reader import CheckpointReader
from gpuload.format.slices import Box
from gpuload.plan import Request as PlanRequest
from gpuload.plan import build_plan
from gpuload.scheduler import LoadStats, execute

__all__ = [
    "Spec",
    "Request",
    "LoadResult",
    "load",
    "plan_load",
    "last_load",
    "normalize_requests",
    "check_remap_target",
    "open_checkpoints",
]

_CPU = CPU_NAME


@dataclasses.dataclass(frozen=True)
class Spec:
    """A destination for gpuload to allocate.

    Parameters
    ----------
    shape:
        Expected shape (checked against the request's box); ``None``: the box's shape.
    dtype:
        Any dtype :func:`gpuload.format.dtypes.as_numpy_dtype` accepts (``"bfloat16"``,
        ``np.float32``, a ``torch.dtype``); ``None``: the stored dtype.
    device:
        A device string (``"cpu"``, ``"gpu:1"``, ``"/device:GPU:1"``): a NumPy or CuPy array;
        a ``torch.device``: a torch tensor; a ``jax.Device``: a JAX array on that device.
    """

    shape: tuple[int, ...] | None = None
    dtype: Any = None
    device: Any = "cpu"


@dataclasses.dataclass(frozen=True)
class Request:
    """One checkpoint tensor (or a box of it) into one target.

    Parameters
    ----------
    key:
        The tensor's name in the checkpoint (a partitioned tensor by its full name).
    box:
        The region to load, in the tensor's coordinates: a tuple of ``slice`` (step 1; axes
        left out are whole), or a :class:`gpuload.format.slices.Box`. ``None``: the whole
        tensor.
    target:
        A :class:`Spec`, or an array to fill in place (NumPy, CuPy, torch). ``None``:
        ``Spec()`` (NumPy, stored dtype).
    rows, columns:
        Shortcuts for ``box``: ``(start, stop)`` along axis 0 / axis 1.
    remap:
        Advanced (warm start): a :class:`gpuload.plan.Remap`. The target must then be an
        array holding the starting values; the rows the remap maps (``rows[j] >= 0``) are
        overwritten by slab ``rows[j]`` of the tensor along ``remap.axis``, and ``box`` is
        the target's region of the *new* tensor on the other axes.
    """

    key: str
    box: Any = None
    target: Any = None
    rows: tuple[int, int] | None = None
    columns: tuple[int, int] | None = None
    remap: Any = None


class LoadResult(dict):
    """The arrays of a :func:`load`, keyed like its requests, with ``stats`` and ``plan``.

    Attributes
    ----------
    stats : gpuload.scheduler.LoadStats
        What the load did and where the time went.
    plan : gpuload.plan.Plan
        The plan it ran (``print(result.plan)``).
    """

    stats: Any
    plan: Any


_last = threading.local()


def last_load() -> LoadResult | None:
    """The result of this thread's most recent :func:`load` (``None`` before the first)."""
    return getattr(_last, "result", None)


def plan_load(checkpoint, requests, *, config=None, allow_cast: bool = False):
    """The :class:`~gpuload.plan.Plan` that :func:`load` would run, without reading data.

    Takes the same arguments as :func:`load` (targets are checked the same way) and
    returns a printable value: files, destinations, chunks, copies and CRC checks;
    destination ``i`` is the ``i``-th request of :func:`normalize_requests`. Nothing is
    allocated: a :class:`Spec` for a torch or JAX device gets no buffer, and a remap
    request may give a :class:`Spec` (shape, dtype, device) for the array that would hold
    its starting values, so that a plan needs no starting values computed.
    """
    cfg = config or config_mod.get()
    bundle = _open(checkpoint)
    return _prepare(bundle, normalize_requests(requests), cfg, allow_cast, allocate=False, spec_for_remap=True)[0]


def load(checkpoint, requests, *, config=None, allow_cast: bool = False) -> LoadResult:
    """Load checkpoint tensors, or boxes of them, into new or existing arrays.

    Parameters
    ----------
    checkpoint:
        A checkpoint prefix or directory (its latest checkpoint), or an opened
        :class:`gpuload.format.bundle.Bundle`.
    requests:
        ``{name: request}`` where a request is a :class:`Request`, a checkpoint key (the
        whole tensor into a new NumPy array), or a ``(key, target)`` pair; or a list of
        :class:`Request` (or keys), keyed by their checkpoint keys.
    config:
        A :class:`gpuload.config.Config`; default :func:`gpuload.config.get`.
    allow_cast:
        Let a target's dtype differ from the stored dtype (the copy converts).

    Returns
    -------
    LoadResult
        A dict ``{name: array}`` (a given target is returned as passed: the same object),
        with ``.stats`` (:class:`~gpuload.scheduler.LoadStats`) and ``.plan``. Nothing is
        returned, and no new array is handed out, when the load fails; a given target may
        then hold partial data.

    Raises
    ------
    TargetError
        (a ``ValueError``) A target of the wrong shape, dtype or device, or not
        C-contiguous or writable; the message names the request and the target.
    PlanError, CheckpointNotFoundError
        A key is not in the checkpoint, a box lies outside its tensor, or dtypes differ
        without ``allow_cast``.
    ChecksumError, ShardReadError
        The data did not read back as stored (``ShardReadError``: a data file missing,
        truncated or unreadable; its ``tensor`` names a tensor of the failed read).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, gpuload
    >>> prefix = os.path.join(tempfile.mkdtemp(), "model.ckpt")
    >>> _ = gpuload.save_checkpoint(prefix, {"emb": np.arange(12, dtype=np.float32).reshape(4, 3)})
    >>> out = np.empty((2, 3), np.float32)
    >>> r = gpuload.load(prefix, {"top": gpuload.Request("emb", rows=(2, 4), target=out),
    ...                           "col": gpuload.Request("emb", columns=(2, 3)),
    ...                           "f64": ("emb", gpuload.Spec(dtype="float64"))}, allow_cast=True)
    >>> r["top"] is out, out[0].tolist(), r["col"].ravel().tolist(), r["f64"].dtype.name
    (True, [6.0, 7.0, 8.0], [2.0, 5.0, 8.0, 11.0], 'float64')
    >>> r.stats.bytes_written
    136
    """
    cfg = config or config_mod.get()
    bundle = _open(checkpoint)
    plan, names, targets, finish = _prepare(bundle, normalize_requests(requests), cfg, allow_cast)
    backends = {}
    for d in plan.destinations:
        if d.device not in backends:
            try:
                backends[d.device] = backend_for(d.device)
            except DeviceUnavailableError as e:
                raise DeviceUnavailableError(f"request {d.name!r} (tensor {d.source!r}) targets {d.device}: {e}") from e
    reader = None

    def host_loader(source, box):
        nonlocal reader
        if reader is None:
            reader = CheckpointReader(bundle.prefix, verify_crc=cfg.verify_crc)
        return reader.get_slice(source, box)

    stats = LoadStats()
    try:
        arrays = execute(plan, backends, config=cfg, host_loader=host_loader, stats=stats, targets=targets)
    finally:
        if reader is not None:
            reader.close()
    result = LoadResult((n, f(a)) for n, f, a in zip(names, finish, arrays))
    result.stats = stats
    result.plan = plan
    _last.result = result
    return result


# ---- requests -> plan requests and destination buffers


def _open(checkpoint):
    from gpuload.format.bundle import Bundle
    from gpuload.format.state import resolve_prefix

    if isinstance(checkpoint, Bundle):
        return checkpoint
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise ArgumentTypeError(
            f"load: checkpoint must be a path (str) or a Bundle, got {type(checkpoint).__name__}: {checkpoint!r}"
        )
    return Bundle.open(resolve_prefix(checkpoint))


def normalize_requests(requests) -> list[tuple[str, Request]]:
    """``requests`` in any form :func:`load` takes, as ``(name, Request)`` pairs in order.

    A dict gives its items; a list gives each :class:`Request` (or key) under its key.
    A key alone becomes ``Request(key)``, a ``(key, target)`` pair ``Request(key,
    target=target)``. This is the order of :func:`plan_load`'s destinations, for clients
    that run a plan themselves (:mod:`gpuload.distributed`).

    Raises
    ------
    ArgumentTypeError
        A form :func:`load` does not take.
    InvalidArgumentError
        A list names one key twice.
    """
    if isinstance(requests, Mapping):
        items = list(requests.items())
    elif isinstance(requests, Sequence) and not isinstance(requests, (str, bytes)):
        items = []
        for r in requests:
            key = r.key if isinstance(r, Request) else r
            if not isinstance(key, str):
                raise ArgumentTypeError(f"load: a list of requests holds Request objects or keys (str), got {r!r}")
            items.append((key, r))
        seen = set()
        for name, _ in items:
            if name in seen:
                raise InvalidArgumentError(
                    f"load: key {name!r} is requested twice in a list; use a dict "
                    f"{{name: request}} to load one tensor into several targets"
                )
            seen.add(name)
    else:
        raise ArgumentTypeError(
            f"load: requests must be a dict {{name: request}} or a list of Request, got {type(requests).__name__}"
        )
    out = []
    for name, r in items:
        if isinstance(r, str):
            r = Request(r)
        elif isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], str):
            r = Request(r[0], target=r[1])
        elif not isinstance(r, Request):
            raise ArgumentTypeError(
                f"load: request {name!r} must be a Request, a checkpoint key or a "
                f"(key, target) pair, got {type(r).__name__}: {r!r}"
            )
        out.append((str(name), r))
    return out


def check_remap_target(name: str, request: Request) -> None:
    """Refuse a remap request whose target is not an array holding its starting values.

    :func:`load`'s rule, for clients that run a plan themselves
    (:mod:`gpuload.distributed`): the rows a remap leaves alone keep the target's values,
    so a :class:`Spec` (or no target) would hand them out uninitialised.
    :func:`plan_load` alone takes a :class:`Spec` there.

    Raises
    ------
    InvalidArgumentError
        ``request`` has a ``remap`` and a :class:`Spec` target, or none.
    """
    target = Spec() if request.target is None else request.target
    if request.remap is not None and isinstance(target, Spec):
        raise InvalidArgumentError(
            f"request {name!r}: a remap request needs an array target holding the starting values, got {target!r}"
        )


def open_checkpoints(checkpoints, allow_cast: bool | Mapping = False, *, caller: str) -> list[tuple[Any, Any, bool]]:
    """A multi-checkpoint load's ``{checkpoint: requests}`` as ``(bundle, requests, allow_cast)``, in order.

    The argument check shared by :func:`gpuload.loader.load_checkpoints` and
    :func:`gpuload.distributed.load.collective_load`: each checkpoint (a prefix or an
    opened :class:`~gpuload.format.bundle.Bundle`) is opened, at most once, with its own
    ``allow_cast``.

    Parameters
    ----------
    checkpoints:
        ``{checkpoint: requests}``.
    allow_cast:
        One flag for every checkpoint, or ``{checkpoint: bool}`` keyed like
        ``checkpoints`` (a checkpoint left out: ``False``): a cast allowed for one
        checkpoint's requests allows none of another's.
    caller:
        The function's name, for the messages.

    Raises
    ------
    ArgumentTypeError
        ``checkpoints`` is not a dict, or ``allow_cast`` neither a bool nor a dict of bools.
    InvalidArgumentError
        Two entries name the same checkpoint, or ``allow_cast`` names a checkpoint that
        ``checkpoints`` does not have.
    """
    from gpuload.format.bundle import Bundle

    if not isinstance(checkpoints, Mapping):
        raise ArgumentTypeError(
            f"{caller}: checkpoints must be a dict {{checkpoint: requests}}, got {type(checkpoints).__name__}"
        )
    if isinstance(allow_cast, Mapping):
        flags = dict(allow_cast)
        unknown = [k for k in flags if k not in checkpoints]
        if unknown:
            raise InvalidArgumentError(
                f"{caller}: allow_cast names checkpoints that are not loaded: {', '.join(map(str, unknown))}"
            )
    elif isinstance(allow_cast, (bool, np.bool_)):
        flags = dict.fromkeys(checkpoints, bool(allow_cast))
    else:
        raise ArgumentTypeError(
            f"{caller}: allow_cast must be a bool or a dict {{checkpoint: bool}}, got {type(allow_cast).__name__}"
        )
    out, seen = [], set()
    for checkpoint, requests in checkpoints.items():
        cast = flags.get(checkpoint, False)
        if not isinstance(cast, (bool, np.bool_)):
            raise ArgumentTypeError(f"{caller}: allow_cast of checkpoint {checkpoint} must be a bool, got {cast!r}")
        bundle = checkpoint if isinstance(checkpoint, Bundle) else Bundle.open(checkpoint)
        if bundle.prefix in seen:
            raise InvalidArgumentError(f"{caller}: checkpoint {bundle.prefix} is given twice")
        seen.add(bundle.prefix)
        out.append((bundle, requests, bool(cast)))
    return out


def _box(name, r: Request, shape) -> Box:
    given = [x is not None for x in (r.box, r.rows, r.columns)]
    if sum(given) > 1:
        raise InvalidArgumentError(f"request {name!r}: give one of box=, rows=, columns=")
    if r.rows is not None or r.columns is not None:
        axis, bounds = (0, r.rows) if r.rows is not None else (1, r.columns)
        assert bounds is not None  # one of the two, checked above
        a, b = bounds
        if len(shape) <= axis:
            raise InvalidArgumentError(f"request {name!r}: tensor {r.key!r} of shape {list(shape)} has no axis {axis}")
        slices = [slice(None)] * len(shape)
        slices[axis] = slice(a, b)
        box = tuple(slices)
    else:
        box = r.box
    if box is None:
        return Box.full(shape)
    if isinstance(box, Box):
        return box
    if isinstance(box, slice):
        box = (box,)
    if not isinstance(box, tuple) or not all(isinstance(s, slice) for s in box):
        raise ArgumentTypeError(f"request {name!r}: box must be a tuple of slices or a Box, got {box!r}")
    if len(box) > len(shape):
        raise InvalidArgumentError(
            f"request {name!r}: box {box!r} has more axes than tensor {r.key!r} of shape {list(shape)}"
        )
    start, size = [], []
    for axis, n in enumerate(shape):
        s = box[axis] if axis < len(box) else slice(None)
        if s.step not in (None, 1):
            raise InvalidArgumentError(
                f"request {name!r}: box {box!r} has a step on axis {axis}; only contiguous boxes load"
            )
        lo = 0 if s.start is None else int(s.start)
        hi = n if s.stop is None else int(s.stop)
        if not 0 <= lo <= hi <= n:
            raise InvalidArgumentError(
                f"request {name!r}: box {box!r} on axis {axis} is [{lo}, {hi}), outside "
                f"tensor {r.key!r} of shape {list(shape)} (negative indices are not taken)"
            )
        start.append(lo)
        size.append(hi - lo)
    return Box(tuple(start), tuple(size))


def _describe(t) -> str:
    if isinstance(t, Spec):
        return repr(t)
    shape = tuple(getattr(t, "shape", ()))
    dtype = getattr(t, "dtype", "?")
    dev = getattr(t, "device", None)
    where = f" on {dev}" if dev is not None else ""
    return f"{type(t).__module__}.{type(t).__name__}(shape={list(shape)}, dtype={dtype}{where})"


def _prepare(bundle, items, cfg, allow_cast, *, allocate: bool = True, spec_for_remap: bool = False):
    """Plan requests for ``items``, the names, the execute targets and the hand-over functions.

    ``allocate=False``: only the plan is wanted: a :class:`Spec` target gets no buffer
    (a torch tensor, possibly on a GPU, or an aligned host buffer for JAX), and the
    targets returned are not usable. ``spec_for_remap`` (only with it): a remap request's
    :class:`Spec` stands for the array holding its starting values (same shape, dtype and
    device), so that a plan needs no starting values computed.
    """
    plan_requests, targets, finish, names = [], [], [], []
    for name, r in items:
        if not isinstance(r.key, str):
            raise ArgumentTypeError(f"request {name!r}: key must be a checkpoint name (str), got {r.key!r}")
        if r.key not in bundle:
            from gpuload.errors import CheckpointNotFoundError
            from gpuload.format.names import close_matches

            close = close_matches(r.key, bundle.names())
            hint = f"; close names: {', '.join(map(repr, close))}" if close else ""
            raise CheckpointNotFoundError(
                f"request {name!r}: tensor {r.key!r} is not in checkpoint {bundle.prefix}{hint}"
            )
        shape = tuple(bundle.shape(r.key))
        stored = np.dtype(bundle.numpy_dtype(r.key))
        box = _box(name, r, shape)
        target = Spec() if r.target is None else r.target
        if isinstance(target, Spec):
            device, dtype, tgt, fin = _from_spec(name, r, target, box, stored, canonical_device, allocate)
        else:
            device, dtype, tgt, fin = _from_array(name, r, target, box)
        if not spec_for_remap:
            check_remap_target(name, r)
        if dtype != stored and not allow_cast:
            raise TargetError(
                f"request {name!r}: tensor {r.key!r} is {stored.name} but the target "
                f"{_describe(target)} is {dtype.name}; pass allow_cast=True to convert"
            )
        if dtype != stored and allow_cast and not converts(stored, dtype):
            raise TargetError(
                f"request {name!r}: allow_cast converts between floating dtypes only; tensor "
                f"{r.key!r} is {stored.name} and the target {_describe(target)} is {dtype.name}"
            )
        plan_requests.append(PlanRequest(name, r.key, box, dtype, device, r.remap))
        targets.append(tgt)
        finish.append(fin)
        names.append(name)
    plan = build_plan(
        bundle,
        plan_requests,
        chunk_bytes=cfg.chunk_bytes,
        gap_bytes=cfg.gap_bytes,
        verify_crc=cfg.verify_crc,
        allow_cast=allow_cast,
    )
    return plan, names, targets, finish


def _same(x):
    return x


def _check_shape(name, r, box, shape, target) -> None:
    if tuple(shape) != box.shape:
        raise TargetError(
            f"request {name!r} loads {r.key!r}{list(box.shape)} (box {box.spec() or 'scalar'}) but "
            f"the target {target} has shape {list(shape)}"
        )


def _from_spec(name, r, spec, box, stored, canonical_device, allocate=True):
    """(device, dtype, target, finish) of a :class:`Spec` target (target ``None``: no buffer yet)."""
    if spec.shape is not None:
        _check_shape(name, r, box, tuple(spec.shape), f"Spec(shape={tuple(spec.shape)})")
    dtype = stored if spec.dtype is None else _as_dtype(name, spec.dtype, spec)
    dev = spec.device
    mod = type(dev).__module__.split(".")[0]
    if mod == "torch":
        return _torch_spec(name, r, box, dtype, dev, allocate)
    if mod.startswith("jax"):
        return _jax_spec(name, dev, dtype, box, allocate)
    try:
        return canonical_device(dev), dtype, None, _same
    except (TypeError, ValueError) as e:
        raise TargetError(f"request {name!r}: {spec} has a bad device: {e}") from None


def _as_dtype(name, dtype, what):
    mod = type(dtype).__module__
    if mod == "torch":
        dtype = str(dtype).rsplit(".", 1)[-1]
    try:
        return _dt.as_numpy_dtype(dtype)
    except ValueError as e:
        raise TargetError(f"request {name!r}: {what} has a bad dtype: {e}") from None


def _torch_spec(name, r, box, dtype, dev, allocate=True):
    import torch

    tdtype = _torch_dtype(name, dtype)
    if not allocate:  # a plan only: the device the tensor would be on, no memory taken
        if dev.type == "cpu":
            return _CPU, dtype, None, _same
        if dev.type == "cuda":
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            return str(Device.gpu(index)), dtype, None, _same
        raise TargetError(f"request {name!r}: {dev} is not a device gpuload fills (CPU or CUDA)")
    tensor = torch.empty(box.shape, dtype=tdtype, device=dev)
    device, dtype, tgt, _ = _from_array(name, r, tensor, box)
    return device, dtype, tgt, lambda _a, t=tensor: t


def _jax_spec(name, dev, dtype, box, allocate=True):
    """JAX arrays are immutable: gpuload fills its own buffer, then hands it to JAX."""
    import jax

    platform = getattr(dev, "platform", None)
    if platform == "cpu":
        device = _CPU
    elif platform in ("gpu", "cuda"):
        index = getattr(dev, "local_hardware_id", None)
        device = str(Device.gpu(dev.id if index is None else index))
    else:
        raise TargetError(
            f"request {name!r}: JAX device {dev!r} (platform {platform!r}) is neither a CPU nor a CUDA GPU"
        )

    # JAX's CPU client takes a DLPack buffer without a copy only when it is 64-byte aligned.
    # The CPU backend maps large arrays (page-aligned) but mallocs small ones (16-byte
    # aligned): allocate those here. GPU buffers come from CuPy's pool, 256-byte aligned.
    small = box.size * dtype.itemsize < _host.HUGE_BYTES
    aligned = allocate and device == _CPU and small and dtype.kind not in "OSU"
    target = _aligned_empty(box.shape, dtype) if aligned else None

    def finish(a, _dev=dev):
        if device == _CPU:
            try:  # zero-copy when JAX accepts the buffer (aligned, and a dtype DLPack carries)
                out = jax.dlpack.from_dlpack(a)
            except Exception:  # noqa: BLE001  (e.g. bfloat16, which NumPy's DLPack does not carry)
                return jax.device_put(a, _dev)
            return out if out.devices() == {_dev} else jax.device_put(out, _dev)
        return jax.dlpack.from_dlpack(a)

    return device, dtype, target, finish


def _aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    skip = (-raw.ctypes.data) % align
    return raw[skip : skip + nbytes].view(dtype).reshape(shape)


_TORCH_NAMES = {
    "bfloat16": "bfloat16",
    "float16": "float16",
    "float32": "float32",
    "float64": "float64",
    "int8": "int8",
    "uint8": "uint8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "bool": "bool",
    "complex64": "complex64",
    "complex128": "complex128",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
}


def _torch_dtype(name, dtype):
    import torch

    t = _TORCH_NAMES.get(np.dtype(dtype).name)
    if t is None or not hasattr(torch, t):
        raise TargetError(f"request {name!r}: dtype {np.dtype(dtype).name} has no torch counterpart")
    return getattr(torch, t)


def _from_array(name, r, target, box):
    """(device, dtype, execute target, finish) of an array filled in place."""
    mod = type(target).__module__.split(".")[0]
    if isinstance(target, np.ndarray):
        _check_host(name, r, box, target, _describe(target))
        return _CPU, target.dtype, target, lambda _a, t=target: t
    cp = sys.modules.get("cupy")  # a CuPy array exists only once CuPy is imported
    if cp is not None and isinstance(target, cp.ndarray):
        _check_shape(name, r, box, target.shape, _describe(target))
        if not target.flags.c_contiguous:
            raise TargetError(f"request {name!r}: the target {_describe(target)} is not C-contiguous")
        return str(Device.gpu(target.device.id)), np.dtype(target.dtype), target, lambda _a, t=target: t
    if mod == "torch":
        return _torch_target(name, r, target, box)
    if mod.startswith("jax"):
        raise TargetError(
            f"request {name!r}: the target {_describe(target)} is a JAX array, which is immutable; "
            f"pass gpuload.Spec(dtype=..., device=<a jax.Device>) and use the array load returns"
        )
    raise ArgumentTypeError(
        f"request {name!r}: target must be a gpuload.Spec, a NumPy or CuPy array or a torch "
        f"tensor, got {type(target).__module__}.{type(target).__name__}"
    )


def _check_host(name, r, box, arr, what) -> None:
    _check_shape(name, r, box, arr.shape, what)
    if not arr.flags.c_contiguous:
        raise TargetError(f"request {name!r}: the target {what} is not C-contiguous")
    if not arr.flags.writeable:
        raise TargetError(f"request {name!r}: the target {what} is read-only")
    if not arr.dtype.isnative:
        raise TargetError(
            f"request {name!r}: the target {what} is {arr.dtype.str} (non-native byte order); "
            f"pass an array of native byte order"
        )
    if arr.dtype.kind in "SUO":
        raise TargetError(
            f"request {name!r}: the target {what} holds {arr.dtype}; string tensors load into "
            f"a Spec target (a NumPy object array)"
        )


def _torch_target(name, r, t, box):
    """A torch tensor's memory as a NumPy (CPU) or CuPy (CUDA) array: the load writes into it."""
    import torch

    what = _describe(t)
    _check_shape(name, r, box, tuple(t.shape), what)
    if not t.is_contiguous():
        raise TargetError(f"request {name!r}: the target {what} is not contiguous")
    if t.requires_grad:
        raise TargetError(
            f"request {name!r}: the target {what} requires grad; load into it under "
            f"torch.no_grad() or pass tensor.detach()"
        )
    np_dtype = _dt.as_numpy_dtype(str(t.dtype).rsplit(".", 1)[-1])
    if t.device.type == "cpu":
        # bfloat16 has no NumPy twin in torch: see its bits as int16, then as ml_dtypes' bfloat16.
        view = t.view(torch.int16).numpy().view(np_dtype) if t.dtype == torch.bfloat16 else t.numpy()
        return _CPU, np_dtype, view, lambda _a, tt=t: tt
    if t.device.type == "cuda":
        import cupy

        index = t.device.index if t.device.index is not None else torch.cuda.current_device()
        with cupy.cuda.Device(index):
            src = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
            view = cupy.asarray(src)  # __cuda_array_interface__: no copy
            if t.dtype == torch.bfloat16:
                view = view.view(np_dtype)
        stream = torch.cuda.current_stream(index).cuda_stream
        return str(Device.gpu(index)), np_dtype, (view, stream), lambda _a, tt=t: tt
    raise TargetError(f"request {name!r}: the target {what} is on {t.device}; gpuload fills CPU and CUDA tensors")
