"""GPU destinations: chunks move between the ranks' GPUs with NCCL (CuPy's ``cupy.cuda.nccl``).

Used for a collective load when every destination of the global plan is on a GPU and
every rank has NCCL (the ``nvidia-nccl-cu12`` / ``-cu13`` wheel of the CUDA extras) and
one GPU. Per chunk, on one CUDA stream per rank, in the plan's chunk order:

* the reader copies the chunk from its pinned ring slot into the slot's device staging
  buffer (async H2D), then ``ncclBroadcast`` (every rank needs it) or grouped
  ``ncclSend`` to each receiver; receivers ``ncclBroadcast`` / ``ncclRecv`` straight into
  their device staging buffer, so the bytes never touch the receivers' host memory;
* every rank that needs the chunk copies it from device staging into its destinations
  through the CUDA backend (:meth:`gpuload.backend.cuda.CudaLoad.submit_device`: the same
  box-copy, gather and cast kernels as a single-process load), on the backend's streams,
  which wait for the transfer's event.

The NCCL communicator is built from the MPI one: rank 0's unique id reaches the others
through the coordinator's deadline-bounded exchange. NCCL waits are polled events; after
``collective_timeout`` without progress the NCCL communicator is aborted
(``ncclCommAbort``), which ends any kernel still waiting for a peer.
"""

from __future__ import annotations

import socket

import numpy as np

from gpuload.devices import Device

__all__ = ["NcclTransport", "nccl_device"]


def nccl_device(dest_devices) -> tuple[int, str] | None:
    """The GPU this rank would use for NCCL and its identity, or ``None`` when it cannot.

    Returns ``(CUDA device index, "host:PCI bus id")``: NCCL refuses two ranks on one GPU,
    so the caller uses NCCL only when every rank's identity differs.

    ``dest_devices``: canonical devices of this rank's destinations. All must be one GPU
    (``None`` when the rank has CPU destinations or several GPUs); with none, the current
    CUDA device. ``None`` too when CuPy or NCCL is missing.
    """
    devs = {Device.parse(d) for d in dest_devices}
    if any(not d.is_gpu for d in devs) or len(devs) > 1:
        return None
    try:
        import cupy
        from cupy.cuda import nccl

        if not nccl.available or cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        index = devs.pop().index if devs else int(cupy.cuda.runtime.getDevice())
        return index, f"{socket.gethostname()}:{cupy.cuda.Device(index).pci_bus_id}"
    except Exception:  # noqa: BLE001 - no CuPy, no driver: no NCCL
        return None


class _EventToken:
    __slots__ = ("event", "keep")

    def __init__(self, event, keep):
        self.event, self.keep = event, keep

    def done(self) -> bool:
        if self.event.done:
            self.keep = ()
            return True
        return False

    def wait(self) -> None:
        self.event.synchronize()
        self.keep = ()


class NcclTransport:
    """One rank's NCCL communicator, stream and device staging for a collective load.

    Parameters
    ----------
    co:
        The :class:`~gpuload.distributed.comm.Coordinator` (MPI) of the load.
    device:
        This rank's CUDA device index.
    """

    def __init__(self, co, device: int):
        import cupy
        from cupy.cuda import nccl

        self._cp, self._nccl = cupy, nccl
        self.device = int(device)
        uid = nccl.get_unique_id() if co.rank == 0 else None
        uid = co.allgather(uid, "sharing the NCCL unique id")[0]
        with cupy.cuda.Device(self.device):
            # Every rank passed the exchange just above, so every rank is here too.
            self.comm = nccl.NcclCommunicator(co.size, uid, co.rank)
            self.stream = cupy.cuda.Stream(non_blocking=True)
        self._staging: dict[int, object] = {}

    def staging(self, slot: int, nbytes: int):
        buf = self._staging.get(slot)
        if buf is None or buf.nbytes < nbytes:
            # On the stream that writes it (CuPy's pool reuses memory in that stream's order);
            # the previous buffer is idle: the slot's tokens were waited for.
            self._staging.pop(slot, None)
            with self._cp.cuda.Device(self.device), self.stream:
                buf = self._staging[slot] = self._cp.empty(nbytes, dtype=np.uint8)
        return buf

    def post(self, t, rank: int, slot: int, host_view, copies, dests, dtypes, backend) -> list:
        """Enqueue chunk ``t``'s H2D (reader) and NCCL transfer on this transport's stream, and
        its copies into ``dests`` through ``backend`` (the rank's
        :class:`~gpuload.backend.cuda.CudaBackend`: box copies, gathers and casts run exactly
        as in a single-process load, reading the device staging in place).

        Returns the tokens to wait on before the slot (host and device staging) is reused.
        """
        cp, nccl = self._cp, self._nccl
        with cp.cuda.Device(self.device):
            dev = self.staging(slot, t.size)
            s = self.stream.ptr
            keep = [dev]
            if t.reader == rank:
                host = np.frombuffer(host_view, dtype=np.uint8)
                cp.cuda.runtime.memcpyAsync(
                    dev.data.ptr, host.ctypes.data, t.size, cp.cuda.runtime.memcpyHostToDevice, s
                )
                keep.append(host)
            if t.broadcast:
                self.comm.broadcast(dev.data.ptr, dev.data.ptr, t.size, nccl.NCCL_UINT8, t.reader, s)
            elif t.reader == rank and t.receivers:
                nccl.groupStart()
                for r in t.receivers:
                    self.comm.send(dev.data.ptr, t.size, nccl.NCCL_UINT8, r, s)
                nccl.groupEnd()
            elif t.reader != rank:
                self.comm.recv(dev.data.ptr, t.size, nccl.NCCL_UINT8, t.reader, s)
            arrived = self.stream.record(cp.cuda.Event(disable_timing=True))
        tokens = [_EventToken(arrived, tuple(keep))]
        if copies:
            tokens.append(backend.submit_device(slot, dev, t.size, copies, dests, dtypes, arrived))
        return tokens

    def abort(self) -> None:
        """``ncclCommAbort``: ends NCCL kernels still waiting for peers (after a failure)."""
        try:
            self.comm.abort()
        except Exception:  # noqa: BLE001 - best effort on a failed load
            pass

    def close(self) -> None:
        """Wait for the stream and free the device staging (the communicator stays cached)."""
        self.stream.synchronize()
        self._staging.clear()
