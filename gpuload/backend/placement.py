"""Device strings, GPU discovery and the backend of each device.

Every device string TensorFlow users write is accepted and turned into one canonical form,
``"/device:CPU:0"`` or ``"/device:GPU:N"``:

=============================================  ======================
accepted                                       canonical
=============================================  ======================
``cpu``, ``cpu:0``, ``/cpu:0``, ``/device:CPU:0``  ``/device:CPU:0``
``gpu``, ``cuda``                              ``/device:GPU:0``
``gpu:1``, ``/gpu:1``, ``cuda:1``,             ``/device:GPU:1``
``/device:GPU:1``, ``/physical_device:GPU:1``,
``/job:localhost/replica:0/task:0/device:GPU:1``
=============================================  ======================

Matching ignores case. Discovery (:func:`is_gpu_available`, :func:`gpu_count`) is probed
once per process and never raises; asking for a GPU that is not there does
(:func:`check_device`). Nothing here imports CuPy until a GPU is probed.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import warnings

from gpuload.errors import DeviceUnavailableError

__all__ = [
    "CPU",
    "backend_for",
    "canonical_device",
    "check_device",
    "default_device",
    "gpu_count",
    "is_gpu_available",
]

#: The canonical CPU device string.
CPU = "/device:CPU:0"

_DEVICE_RE = re.compile(
    r"""^
    (?:/job:[^/]+)?(?:/replica:\d+)?(?:/task:\d+)?   # TF's full name prefix
    (?:/?(?:physical_)?device:|/)?                   # /device:, /physical_device:, / or nothing
    (?P<kind>cpu|gpu|cuda)
    (?::(?P<index>\d+))?
    $""",
    re.IGNORECASE | re.VERBOSE,
)

_INSTALL_HINT = (
    "install CuPy with NVRTC and the CUDA runtime for your CUDA version (in a gpuload checkout: "
    "pip install -e '.[cuda13]' for CUDA 13, pip install -e '.[cuda12]' for CUDA 12), "
    "check that the NVIDIA driver works (nvidia-smi) and that CUDA_VISIBLE_DEVICES exposes "
    'the GPU, or load with device="cpu"'
)


def canonical_device(device: str | None = None) -> str:
    """Turn any accepted device string into ``"/device:CPU:0"`` or ``"/device:GPU:N"``.

    Parameters
    ----------
    device:
        A device string (see the module table), or ``None`` for :func:`default_device`.

    Returns
    -------
    str
        The canonical form. No device is probed, except for ``None``.

    Raises
    ------
    ValueError
        Not a device string, or a CPU index other than 0.
    """
    if device is None:
        return default_device()
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or '/device:GPU:0', got {device!r}")
    m = _DEVICE_RE.match(device.strip())
    if m is None:
        raise ValueError(
            f"not a device string: {device!r}; expected e.g. 'cpu', '/cpu:0', 'gpu:1', 'cuda:1', "
            f"'/device:GPU:1' or '/job:localhost/replica:0/task:0/device:GPU:1'"
        )
    index = int(m.group("index") or 0)
    if m.group("kind").lower() == "cpu":
        if index != 0:
            raise ValueError(f"{device!r}: gpuload has a single CPU device, /device:CPU:0")
        return CPU
    return f"/device:GPU:{index}"


def _gpu_index(canonical: str) -> int | None:
    return None if canonical == CPU else int(canonical.rsplit(":", 1)[1])


#: Oldest CuPy gpuload runs on: CuPy 13 cannot make bfloat16 arrays, and a bfloat16
#: variable must be a bfloat16 array (its dtype, DLPack and __cuda_array_interface__ say so).
MIN_CUPY = (14, 0)


def _cupy_version_ok(version: str) -> bool:
    m = re.match(r"(\d+)\.(\d+)", version)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= MIN_CUPY


@functools.cache
def _probe() -> tuple[int, str]:
    """(visible CUDA devices, what the probe saw). Never raises; runs once per process."""
    return _probe_now()


def _probe_now() -> tuple[int, str]:
    """The probe itself (uncached).

    Warnings raised while importing or probing CuPy are silenced here: under
    ``-W error`` (or pytest's ``filterwarnings = error``) they would otherwise turn a
    working GPU into "absent".
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() == "":
        return 0, "CUDA_VISIBLE_DEVICES is set to an empty string, which hides every GPU"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import cupy
        except Exception as e:  # noqa: BLE001 - ImportError, or CuPy's diagnostics for a broken install
            return 0, f"CuPy could not be imported ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        version = str(getattr(cupy, "__version__", "?"))
        if not _cupy_version_ok(version):
            return 0, (
                f"CuPy {version} is installed but gpuload needs CuPy >= {MIN_CUPY[0]}.{MIN_CUPY[1]} "
                f"(bfloat16 arrays); upgrade it"
            )
        try:
            count = int(cupy.cuda.runtime.getDeviceCount())
        except Exception as e:  # noqa: BLE001 - no driver, driver too old, no device
            return 0, f"CuPy {cupy.__version__} found no usable CUDA device ({type(e).__name__}: {e})"
    if count == 0:
        return 0, f"CuPy {cupy.__version__} sees 0 CUDA devices (CUDA_VISIBLE_DEVICES={visible!r})"
    return count, f"CuPy {cupy.__version__} sees {count} CUDA device(s) (CUDA_VISIBLE_DEVICES={visible!r})"


def is_gpu_available() -> bool:
    """Whether at least one CUDA device is usable through CuPy.

    Probed once per process (CuPy importable, driver present, a device visible) and never
    raises: CuPy missing, no driver, or ``CUDA_VISIBLE_DEVICES=""`` all give ``False``.
    """
    return _probe()[0] > 0


def gpu_count() -> int:
    """Number of usable CUDA devices (0 when :func:`is_gpu_available` is ``False``)."""
    return _probe()[0]


def default_device() -> str:
    """``"/device:GPU:0"`` when a GPU is usable, else ``"/device:CPU:0"``.

    This is TensorFlow's soft placement for a variable with no device: the first GPU if
    there is one. An explicitly requested GPU never falls back; see :func:`check_device`.
    """
    return "/device:GPU:0" if is_gpu_available() else CPU


def check_device(device: str | None) -> str:
    """Canonicalise ``device`` and make sure it exists.

    Parameters
    ----------
    device:
        Any accepted device string, or ``None`` for :func:`default_device`.

    Returns
    -------
    str
        The canonical device string.

    Raises
    ------
    DeviceUnavailableError
        A GPU was asked for and none (or not that one) is usable. The message says what
        was probed and how to fix it.
    ValueError
        ``device`` is not a device string.
    """
    canonical = canonical_device(device)
    index = _gpu_index(canonical)
    if index is None:
        return canonical
    count, seen = _probe()
    if count == 0:
        raise DeviceUnavailableError(
            f"{device!r} ({canonical}) requested but no CUDA device is usable: {seen}; {_INSTALL_HINT}"
        )
    if index >= count:
        raise DeviceUnavailableError(
            f"{device!r} ({canonical}) requested but only GPUs 0..{count - 1} are visible: {seen}; "
            f"pick an index below {count} or change CUDA_VISIBLE_DEVICES"
        )
    return canonical


_backends: dict = {}
_backends_lock = threading.Lock()


def backend_for(device: str | None):
    """The backend that executes copies on ``device``, created once per device.

    Parameters
    ----------
    device:
        Any accepted device string, or ``None`` for :func:`default_device`.

    Returns
    -------
    HostBackend or CudaBackend
        :class:`~gpuload.backend.host.HostBackend` for the CPU,
        :class:`~gpuload.backend.cuda.CudaBackend` for ``/device:GPU:N``.

    Raises
    ------
    DeviceUnavailableError
        As :func:`check_device`.
    """
    canonical = check_device(device)
    with _backends_lock:
        backend = _backends.get(canonical)
        if backend is None:
            if canonical == CPU:
                from gpuload.backend.host import HostBackend

                backend = HostBackend()
            else:
                from gpuload.backend.cuda import CudaBackend

                backend = CudaBackend(_gpu_index(canonical))
            _backends[canonical] = backend
        return backend
