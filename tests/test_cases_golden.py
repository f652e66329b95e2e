"""Replay every init_from_checkpoint scenario that real TensorFlow recorded in cases.json.

Each scenario builds its variables the way TensorFlow users do (nested variable_scope,
get_variable with a constant initializer and a fixed partitioner), calls
init_from_checkpoint with the recorded assignment map, runs the initializer and compares
every variable part bit for bit with TensorFlow's values; or expects the ValueError
TensorFlow raised, at the call.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from conftest import golden_dir

import gpuload

CASES = json.loads((golden_dir() / "cases.json").read_text()) if (golden_dir() / "cases.json").exists() else []

CONSTANTS = {"f": -3.5, "c": -3.5, "i": -3, "u": -3, "b": True}


def constant_for(dtype: str):
    if dtype == "string":
        return b"init"
    if dtype == "bfloat16":
        return -3.5
    kind = np.dtype(dtype).kind
    return CONSTANTS[kind]


def build_variables(case):
    """The case's variables, made as TensorFlow users make them (also warm_start cases,
    whose variables may carry ``trainable``)."""
    gpuload.reset_default_graph()
    made = {}
    for spec in case["variables"]:
        *scopes, leaf = spec["name"].split("/")
        parts = spec["partitions"]
        partitioner = (lambda shape, dtype, p=parts: list(p)) if parts else None

        def make(level=0):
            if level < len(scopes):
                with gpuload.variable_scope(scopes[level]):
                    return make(level + 1)
            return gpuload.get_variable(
                leaf,
                shape=spec["shape"],
                dtype=spec["dtype"],
                initializer=gpuload.constant_initializer(constant_for(spec["dtype"])),
                partitioner=partitioner,
                device="/cpu:0",
                trainable=spec.get("trainable", True),
            )

        made[spec["name"]] = make()
    return made


def target_of(t, made):
    if "name" in t:
        return t["name"]
    if "variable" in t:
        return made[t["variable"]]
    if "parts_of" in t:
        return made[t["parts_of"]]._get_variable_list()
    raise AssertionError(f"unknown target form {t}")


def as_bits(a):
    a = np.asarray(a)
    if a.dtype.kind in "fc" or a.dtype.name == "bfloat16":
        return (
            a.view(f"u{a.dtype.itemsize}")
            if a.dtype.kind == "f" or a.dtype.name == "bfloat16"
            else a.view(f"u{a.dtype.itemsize // 2}")
        )
    return a


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case, golden):
    made = build_variables(case)
    pairs = [(k, target_of(t, made)) for k, t in case["assignment_map"]]
    amap = dict(pairs) if case["assignment_map_form"] == "dict" else pairs
    ckpt = str(golden / case["checkpoint"])
    expect = case["expect"]
    if "error" in expect:
        assert expect["error"] == "ValueError"
        with pytest.raises(ValueError) as info:
            gpuload.init_from_checkpoint(ckpt, amap)
        msg = str(info.value)
        assert len(msg) < 2000, "messages must not dump the checkpoint"
        assert case["checkpoint"].split("/")[-1] in msg, "the message names the checkpoint"
        # nothing was scheduled: every variable still initializes from its own initializer
        gpuload.global_variables_initializer().run()
        for v in gpuload.global_variables():
            assert v._init_source is None
        return

    gpuload.init_from_checkpoint(ckpt, amap)
    gpuload.global_variables_initializer().run()
    values = np.load(golden / (expect["values"] + ".npz"))
    strings_path = golden / (expect["values"] + ".strings.json")
    strings = json.loads(strings_path.read_text()) if strings_path.exists() else {}
    got = {v.op.name: v for v in gpuload.global_variables()}
    assert set(got) == set(values.files) | set(strings)
    for name in values.files:
        v = got[name]
        have = v.numpy()
        want = values[name]
        if v.dtype.name == "bfloat16":
            have = have.astype(np.float32)
        assert have.shape == want.shape, name
        assert have.dtype == want.dtype, name
        np.testing.assert_array_equal(as_bits(have), as_bits(want), err_msg=name)
    for name, s in strings.items():
        have = got[name].numpy()
        want = np.array([base64.b64decode(x) for x in s["base64"]], dtype=object).reshape(s["shape"])
        assert have.shape == want.shape
        assert list(have.ravel()) == list(want.ravel()), name


def test_every_case_is_replayed(golden):
    assert len(CASES) == len(json.loads((golden / "cases.json").read_text())) >= 20
