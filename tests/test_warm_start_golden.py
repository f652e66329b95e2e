"""Replay every warm_start scenario recorded with TensorFlow 2.21 (warm_start_cases.json).

Each scenario builds its variables as TensorFlow users do (nested variable_scope,
get_variable with a constant initializer, a fixed partitioner, trainable as recorded),
calls gpuload.warm_start with the recorded arguments, runs the initializer and compares
every variable part bit for bit with the recorded values; or expects the ValueError at
the call, with nothing scheduled. Cases where TensorFlow itself fails (``tf_outcome``)
carry the documented meaning as their values (see the golden README).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import golden_dir
from test_cases_golden import build_variables  # the same variable recipe (README of the golden data)

import gpuload

_JSON = golden_dir() / "warm_start_cases.json"
CASES = json.loads(_JSON.read_text()) if _JSON.exists() else []


def call_args(case, made, golden):
    ws = case["warm_start"]
    vtws = ws["vars_to_warm_start"]
    if isinstance(vtws, dict):
        objs = []
        for name in vtws["variables"]:
            v = made[name]
            objs.extend(list(v) if isinstance(v, gpuload.PartitionedVariable) else [v])
        vtws = objs
    infos = None
    if ws["var_name_to_vocab_info"] is not None:
        infos = {}
        for name, vi in ws["var_name_to_vocab_info"].items():
            backup = vi["backup_initializer"]
            infos[name] = gpuload.VocabInfo(
                new_vocab=str(golden / vi["new_vocab"]),
                new_vocab_size=vi["new_vocab_size"],
                num_oov_buckets=vi["num_oov_buckets"],
                old_vocab=str(golden / vi["old_vocab"]),
                old_vocab_size=vi["old_vocab_size"],
                backup_initializer=None if backup is None else gpuload.constant_initializer(backup["constant"]),
                axis=vi["axis"],
            )
    return str(golden / case["checkpoint"]), vtws, infos, ws["var_name_to_prev_var_name"]


def bits(a):
    a = np.asarray(a)
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case, golden):
    made = build_variables(case)
    args = call_args(case, made, golden)
    expect = case["expect"]
    if "error" in expect:
        assert expect["error"] == "ValueError" and expect.get("when", "call") == "call"
        with pytest.raises(ValueError) as info:
            gpuload.warm_start(*args)
        msg = str(info.value)
        assert len(msg) < 2000, "messages must not dump the checkpoint"
        # The message names the variable concerned.
        assert any(v["name"] in msg for v in case["variables"]), msg
        gpuload.global_variables_initializer().run()
        for v in gpuload.global_variables():
            assert v._init_source is None
        return

    gpuload.warm_start(*args)
    gpuload.global_variables_initializer().run()
    values = np.load(golden / (expect["values"] + ".npz"))
    got = {v.op.name: v for v in gpuload.global_variables()}
    assert set(got) == set(values.files)
    for name in values.files:
        have, want = got[name].numpy(), values[name]
        assert have.shape == want.shape and have.dtype == want.dtype, name
        np.testing.assert_array_equal(bits(have), bits(want), err_msg=name)


def test_every_case_is_replayed(golden):
    assert len(CASES) == len(json.loads((golden / "warm_start_cases.json").read_text())) >= 8
