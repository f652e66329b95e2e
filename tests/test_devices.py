"""gpuload.devices.Device: every accepted spelling of a device string, parsed in one place."""

from __future__ import annotations

import dataclasses

import pytest

from gpuload.backend import placement
from gpuload.devices import CPU, Device
from gpuload.distributed import task_of
from gpuload.graph import initializers

# (spelling, kind, index, task)
SPELLINGS = [
    ("cpu", "CPU", 0, None),
    ("CPU", "CPU", 0, None),
    ("cpu:0", "CPU", 0, None),
    ("CPU:0", "CPU", 0, None),
    ("/cpu:0", "CPU", 0, None),
    ("/CPU:0", "CPU", 0, None),
    ("/device:CPU:0", "CPU", 0, None),
    ("device:cpu:0", "CPU", 0, None),
    ("/device:CPU", "CPU", 0, None),
    ("/physical_device:CPU:0", "CPU", 0, None),
    ("/job:localhost/replica:0/task:0/device:CPU:0", "CPU", 0, 0),
    ("/job:worker/replica:0/task:3/device:CPU:0", "CPU", 0, 3),
    ("gpu", "GPU", 0, None),
    ("GPU", "GPU", 0, None),
    ("cuda", "GPU", 0, None),
    ("gpu:1", "GPU", 1, None),
    ("cuda:1", "GPU", 1, None),
    ("/gpu:1", "GPU", 1, None),
    ("/GPU:1", "GPU", 1, None),
    ("/device:GPU:1", "GPU", 1, None),
    ("/device:gpu:3", "GPU", 3, None),
    ("  /device:gpu:3 ", "GPU", 3, None),
    ("/device:GPU", "GPU", 0, None),
    ("/device:CUDA:2", "GPU", 2, None),
    ("/physical_device:GPU:2", "GPU", 2, None),
    ("/job:localhost/replica:0/task:0/device:GPU:1", "GPU", 1, 0),
    ("/job:w/task:2/device:GPU:0", "GPU", 0, 2),
    ("/job:Worker/Task:12/device:GPU:1", "GPU", 1, 12),
    ("/job:worker/task:3/gpu:1", "GPU", 1, 3),
    ("/task:4/device:GPU:7", "GPU", 7, 4),
    ("/job:ps/device:CPU:0", "CPU", 0, None),
    ("gpu:12", "GPU", 12, None),
]


@pytest.mark.parametrize(("spec", "kind", "index", "task"), SPELLINGS)
def test_every_spelling(spec, kind, index, task):
    d = Device.parse(spec)
    assert (d.kind, d.index, d.task) == (kind, index, task)
    assert str(d) == f"/device:{kind}:{index}"
    assert d.is_gpu == (kind == "GPU")
    # The canonical string parses back to the same device (without the task).
    assert Device.parse(str(d)) == dataclasses.replace(d, task=None)


@pytest.mark.parametrize(("spec", "kind", "index", "task"), SPELLINGS)
def test_every_parser_of_gpuload_agrees(spec, kind, index, task):
    """canonical_device, task_of and the initializers' device_kind_index all go through Device.parse."""
    canonical = f"/device:{kind}:{index}"
    assert placement.canonical_device(spec) == canonical
    assert task_of(spec) == task
    assert initializers.device_kind_index(canonical) == (kind, index)


@pytest.mark.parametrize(
    "bad",
    ["", "  ", "tpu", "gpu:", "gpu:-1", "gpu:1:2", "gpu1", "/gpu/0", "/job:x/gpu:0/extra", "/job:w/task:0gpu:0",
     "/job:w/task:0device:GPU:0", "device:", "/device:GPU:x", "/replica:0/job:w/device:GPU:0", "cpu :0"],
)  # fmt: skip
def test_bad_strings_name_the_spec_and_what_is_accepted(bad):
    with pytest.raises(ValueError) as info:
        Device.parse(bad)
    msg = str(info.value)
    assert f"not a device string: {bad!r}" in msg
    assert "expected e.g. 'cpu', '/cpu:0', 'gpu:1'" in msg and "/device:GPU:1" in msg


@pytest.mark.parametrize("bad", ["cpu:1", "/device:CPU:2", "/job:w/task:0/device:CPU:1"])
def test_a_second_cpu_is_refused(bad):
    with pytest.raises(ValueError, match=rf"^{bad!r}: gpuload has a single CPU device, /device:CPU:0$"):
        Device.parse(bad)


def test_two_tasks_are_refused():
    with pytest.raises(ValueError, match=r"'/job:w/task:1/task:2/device:CPU:0' names more than one task: \[1, 2\]"):
        Device.parse("/job:w/task:1/task:2/device:CPU:0")
    with pytest.raises(ValueError, match="not a device string"):  # one task twice: still not TF's grammar
        Device.parse("/task:1/task:1/device:CPU:0")


@pytest.mark.parametrize("bad", [1, 1.0, None, b"cpu", ["cpu"]])
def test_non_strings_are_a_type_error(bad):
    with pytest.raises(TypeError, match=r"device must be a string such as 'cpu' or '/device:GPU:0', got "):
        Device.parse(bad)


def test_value_type():
    d = Device.parse("/job:w/task:2/device:GPU:1")
    assert Device.parse(d) is d
    assert d == Device("GPU", 1, 2) and hash(d) == hash(Device("GPU", 1, 2))
    assert d != Device.gpu(1) and Device.gpu(1) == Device.parse("gpu:1")
    assert CPU == Device.parse("cpu") and str(CPU) == "/device:CPU:0"
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.index = 0  # type: ignore[misc]
    assert {Device.parse(s) for s in ("gpu", "/gpu:0", "cuda:0", "/device:GPU:0")} == {Device.gpu(0)}


@pytest.mark.parametrize(
    ("args", "match"),
    [(("TPU",), "kind must be 'CPU' or 'GPU'"), (("gpu",), "kind must be 'CPU' or 'GPU'"),
     (("GPU", -1), "index must be an integer >= 0"), (("GPU", True), "index must be an integer >= 0"),
     (("GPU", "1"), "index must be an integer >= 0"), (("CPU", 1), "single CPU device"),
     (("GPU", 0, -2), "task must be an integer >= 0 or None")],
)  # fmt: skip
def test_constructor_checks(args, match):
    with pytest.raises(ValueError, match=match):
        Device(*args)


def test_device_kind_index_takes_only_canonical_strings():
    assert initializers.device_kind_index(None) == ("CPU", 0)
    with pytest.raises(ValueError, match=r"not a canonical device string: 'gpu:1' \(expected '/device:GPU:1'\)"):
        initializers.device_kind_index("gpu:1")
    with pytest.raises(ValueError, match="not a device string"):
        initializers.device_kind_index("tpu:0")


def test_task_of_ignores_what_is_not_a_string():
    assert task_of(None) is None
    assert task_of(lambda i: "/gpu:0") is None
    assert task_of(Device("GPU", 0, 5)) == 5


@pytest.mark.parametrize(
    ("spec", "task"),
    [("/job:worker/task:1", 1), ("/job:w/task:1/device:TPU:0", 1), ("/job:w/replica:0/task:4", 4),
     ("task:2", 2), ("/task:3/device:XLA_GPU:1", 3), ("/job:ps", None), ("/device:TPU:0", None), ("", None),
     ("/job:w/task:5/device:GPU:0", 5)],
)  # fmt: skip
def test_task_of_takes_partial_specs_and_any_device_type(spec, task):
    """As TF's DeviceSpec: the task of a name without a device part, or of a device gpuload does not fill."""
    assert task_of(spec) == task
    assert Device.parse_task(spec) == task


@pytest.mark.parametrize("spec", ["/job:worker/task:1", "/job:w/task:1/device:TPU:0", "/device:TPU:0", "task:2"])
def test_partial_or_foreign_specs_are_still_no_device(spec):
    with pytest.raises(ValueError, match=f"not a device string: {spec!r}"):
        Device.parse(spec)
    with pytest.raises(ValueError, match="not a device string"):
        placement.canonical_device(spec)


@pytest.mark.parametrize("bad", ["/job:w/task:0gpu:0", "/task:x", "gpu 0", "/job:w/task:1/task:2"])
def test_task_of_refuses_what_is_no_device_name(bad):
    with pytest.raises(ValueError, match="names more than one task|not a device string"):
        task_of(bad)


def test_the_cpu_name_is_defined_once():
    """Every layer takes the CPU's canonical name from gpuload.devices, none spells it itself."""
    import ast

    from conftest import REPO

    from gpuload.devices import CPU_NAME
    from gpuload.graph import store

    literal = []
    for path in sorted((REPO / "gpuload").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                if node.value.value == "/device:CPU:0":
                    literal.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert literal == []
    assert CPU_NAME == str(CPU) == "/device:CPU:0"
    assert placement.CPU is CPU_NAME and store.CPU_NAME is CPU_NAME
