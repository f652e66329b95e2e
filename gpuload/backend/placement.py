"""GPU discovery and the backend of each device.

Device strings are parsed by :class:`gpuload.devices.Device` (its module lists every
accepted spelling); :func:`canonical_device` gives their canonical form,
``"/device:CPU:0"`` or ``"/device:GPU:N"``. Discovery (:func:`is_gpu_available`,
:func:`gpu_count`) is probed once per process and never raises; asking for a GPU that is
not there does (:func:`check_device`). Nothing here imports CuPy until a GPU is probed.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import warnings

from gpuload.devices import CPU_NAME, Device
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
CPU = CPU_NAME

_INSTALL_HINT = (
    "install CuPy with NVRTC and the CUDA runtime for your CUDA version (in a gpuload checkout: "
    "pip install -e '.[cuda13]' for CUDA 13, pip install -e '.[cuda12]' for CUDA 12), "
    "check that the NVIDIA driver works (nvidia-smi) and that CUDA_VISIBLE_DEVICES exposes "
    'the GPU, or load with device="cpu"'
)


def canonical_device(device: str | Device | None = None) -> str:
    """Turn any accepted device string into ``"/device:CPU:0"`` or ``"/device:GPU:N"``.

    Parameters
    ----------
    device:
        A device string (any spelling :meth:`gpuload.devices.Device.parse` accepts), a
        :class:`~gpuload.devices.Device`, or ``None`` for :func:`default_device`.

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
    return str(Device.parse(device))


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
    return str(Device.gpu(0)) if is_gpu_available() else CPU


def check_device(device: str | Device | None) -> str:
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
    return str(_available(device))


def _available(device: str | Device | None) -> Device:
    """:func:`check_device`'s device, parsed once."""
    d = Device.parse(default_device() if device is None else device)
    canonical, index = str(d), d.index
    if not d.is_gpu:
        return d
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
    return d


_backends: dict = {}
_backends_lock = threading.Lock()


def backend_for(device: str | Device | None):
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
    d = _available(device)
    canonical = str(d)
    with _backends_lock:
        backend = _backends.get(canonical)
        if backend is None:
            if not d.is_gpu:
                from gpuload.backend.host import HostBackend

                backend = HostBackend()
            else:
                from gpuload.backend.cuda import CudaBackend

                backend = CudaBackend(d.index)
            _backends[canonical] = backend
        return backend
