"""warm_start + VocabInfo beyond the golden cases: property tests against a NumPy remap,
bytes read, bad input, dtypes, initializers, selection forms, and the plan's gathers."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuload
from gpuload import config, loader
from gpuload.errors import VocabFileError, WarmStartError
from gpuload.format.slices import Box
from gpuload.graph import ops
from gpuload.graph import vocab as vocab_mod
from gpuload.graph.partition import part_boxes

BF16 = np.dtype(ml_dtypes.bfloat16)


def write_vocab(path, tokens, newline=b"\n", trailing=True):
    data = newline.join(tokens) + (newline if trailing else b"")
    path.write_bytes(data)
    return str(path)


def remap_reference(old, old_tokens, new_tokens, oov, axis, backup, old_size=None):
    """The meaning of a warm start, written directly: position j gets old slab i if new
    token j is old token i (among the first old_size), else the backup value."""
    index = {t: i for i, t in enumerate(old_tokens[:old_size] if old_size else old_tokens)}
    new_shape = list(old.shape)
    new_shape[axis] = len(new_tokens) + oov
    out = np.full(new_shape, backup, dtype=old.dtype)
    for j, t in enumerate(new_tokens):
        i = index.get(t)
        if i is not None:
            src = [slice(None)] * old.ndim
            dst = [slice(None)] * old.ndim
            src[axis], dst[axis] = i, j
            out[tuple(dst)] = old[tuple(src)]
    return out


def save_old(tmp_path, old, slices_along=None, nslices=1):
    prefix = str(tmp_path / "ckpt" / "model")
    if slices_along is None or nslices <= 1:
        gpuload.save_checkpoint(prefix, {"old/emb": old})
    else:
        parts = [1] * old.ndim
        parts[slices_along] = nslices
        pieces = [(b, np.ascontiguousarray(old[b.as_slices()])) for b in part_boxes(old.shape, parts)]
        gpuload.save_checkpoint(prefix, {}, slices={"old/emb": pieces})
    return prefix


def make_var(name, shape, dtype, partitions=None, initializer=None, trainable=True):
    *scopes, leaf = name.split("/")
    init = initializer if initializer is not None else gpuload.constant_initializer(-3)

    def make(level=0):
        if level < len(scopes):
            with gpuload.variable_scope(scopes[level]):
                return make(level + 1)
        return gpuload.get_variable(
            leaf,
            shape=shape,
            dtype=dtype,
            initializer=init,
            device="/cpu:0",
            partitioner=(lambda shape, dtype, p=partitions: list(p)) if partitions else None,
            trainable=trainable,
        )

    return make()


def value_of(var):
    return var.numpy() if isinstance(var, gpuload.PartitionedVariable) else var.numpy()


# -- property: random vocabularies, partitions, chunks ------------------------------------


@st.composite
def scenarios(draw):
    pool = [b"t%03d" % i for i in range(60)]
    n_old = draw(st.integers(1, 30))
    old_tokens = draw(st.permutations(pool))[:n_old]
    old_size = draw(st.sampled_from([None, max(1, n_old - draw(st.integers(0, 3)))]))
    n_keep = draw(st.integers(0, n_old))
    n_fresh = draw(st.integers(0 if n_keep else 1, 8))
    fresh = [t for t in pool if t not in old_tokens][:n_fresh]
    new_tokens = draw(st.permutations(old_tokens[:n_keep] + fresh))
    oov = draw(st.integers(0, 3))
    axis = draw(st.sampled_from([0, 1]))
    if axis == 1 and old_size is not None:
        old_size = n_old  # axis 1: only the file's length is accepted (TensorFlow ignores the size there)
    rank = draw(st.sampled_from([1, 2])) if axis == 0 else 2
    # Wide rows too, so that 4 KiB chunks cut between and inside rows.
    width = draw(st.integers(1, 6)) * draw(st.sampled_from([1, 1, 130, 700]))
    extra_old_rows = draw(st.integers(0, 2))  # old OOV rows, never carried
    old_shape = [n_old + extra_old_rows] + ([width] if rank == 2 else [])
    if axis == 1:
        old_shape = [width, n_old + extra_old_rows]
    new_extent = len(new_tokens) + oov
    new_shape = list(old_shape)
    new_shape[axis] = new_extent
    part_axis = draw(st.integers(0, rank - 1))
    nparts = draw(st.integers(1, min(4, new_shape[part_axis])))
    partitions = [1] * rank
    partitions[part_axis] = nparts
    slice_axis = draw(st.integers(0, rank - 1))
    nslices = draw(st.integers(1, min(3, old_shape[slice_axis])))
    return dict(
        old_tokens=old_tokens,
        old_size=old_size,
        new_tokens=new_tokens,
        oov=oov,
        axis=axis,
        old_shape=old_shape,
        new_shape=new_shape,
        partitions=partitions if nparts > 1 else None,
        slice_axis=slice_axis,
        nslices=nslices,
        chunk_bytes=draw(st.sampled_from([4096, 8192, 1 << 20])),
        verify_crc=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float32", "int64", "float16"])),
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=scenarios())
def test_remap_equals_numpy(tmp_path_factory, s):
    tmp_path = tmp_path_factory.mktemp("ws")
    rng = np.random.default_rng(len(s["old_tokens"]))
    old = (rng.standard_normal(s["old_shape"]) * 100).astype(s["dtype"])
    prefix = save_old(tmp_path, old, s["slice_axis"], s["nslices"])
    old_file = write_vocab(tmp_path / "old.txt", s["old_tokens"])
    new_file = write_vocab(tmp_path / "new.txt", s["new_tokens"] + [b"unused-extra"])
    gpuload.reset_default_graph()
    var = make_var("new/emb", s["new_shape"], s["dtype"], s["partitions"])
    info = gpuload.VocabInfo(
        new_file,
        len(s["new_tokens"]),
        s["oov"],
        old_file,
        old_vocab_size=s["old_size"] or -1,
        backup_initializer=gpuload.constant_initializer(7),
        axis=s["axis"],
    )
    with config.set(
        chunk_bytes=s["chunk_bytes"], ring_bytes=4 * s["chunk_bytes"], verify_crc=s["verify_crc"], gap_bytes=0
    ):
        gpuload.warm_start(prefix, ".*", {"new/emb": info}, {"new/emb": "old/emb"})
        gpuload.global_variables_initializer().run()
    want = remap_reference(old, s["old_tokens"], s["new_tokens"], s["oov"], s["axis"], 7, s["old_size"])
    np.testing.assert_array_equal(value_of(var), want)

    (stats,) = loader.last_stats()
    itemsize = old.dtype.itemsize
    old_index = {t: i for i, t in enumerate(s["old_tokens"][: s["old_size"] or None])}
    needed = sorted({old_index[t] for t in s["new_tokens"] if t in old_index})
    assert stats.vocab_bytes > 0
    if not needed:
        assert stats.bytes_read == 0
    elif s["verify_crc"]:
        # Every stored piece holding a needed row is read whole, once; the others not at all.
        pieces = (
            part_boxes(old.shape, [s["nslices"] if k == s["slice_axis"] else 1 for k in range(old.ndim)])
            if s["nslices"] > 1
            else [Box.full(old.shape)]
        )
        touched = [
            b for b in pieces if any(b.start[s["axis"]] <= i < b.start[s["axis"]] + b.shape[s["axis"]] for i in needed)
        ]
        assert stats.bytes_read == sum(b.size for b in touched) * itemsize
    elif s["axis"] == 0 and s["partitions"] is None or (s["axis"] == 0 and s["partitions"][0] > 1):
        # CRC off, rows remapped, every part full width: exactly the needed rows are read.
        row_bytes = math.prod(old.shape[1:]) * itemsize
        assert stats.bytes_read == len(needed) * row_bytes
    else:
        assert stats.bytes_read <= old.nbytes


# -- vocabulary files ---------------------------------------------------------------------


def test_vocab_line_endings_and_tokens(tmp_path):
    toks = [b"a", b"a\x00", b"a b", b"\xff\xfe", b"x" * 40, b"a\x01"]
    for newline, trailing in ((b"\n", True), (b"\r\n", True), (b"\n", False)):
        path = write_vocab(tmp_path / "v.txt", toks, newline, trailing)
        v = vocab_mod.read_vocab(path, -1, what="v")
        assert len(v) == len(toks) and [v.token(i) for i in range(len(v))] == toks
    new = vocab_mod.read_vocab(write_vocab(tmp_path / "n.txt", [b"a\x01", b"zz", b"a", b"a\x00"]), -1, what="n")
    old = vocab_mod.read_vocab(path, -1, what="o")
    assert vocab_mod.vocab_mapping(new, old).tolist() == [5, -1, 0, 1]


def test_vocab_mapping_survives_hash_collisions(tmp_path, monkeypatch):
    old = vocab_mod.read_vocab(write_vocab(tmp_path / "o.txt", [b"q", b"r", b"s"]), -1, what="o")
    new = vocab_mod.read_vocab(write_vocab(tmp_path / "n.txt", [b"s", b"x", b"q"]), -1, what="n")
    monkeypatch.setattr(vocab_mod, "_hashes", lambda rows: np.zeros(rows.shape[0], np.uint64))
    assert vocab_mod.vocab_mapping(new, old).tolist() == [2, -1, 0]
    with pytest.raises(VocabFileError, match="line 3"):
        vocab_mod.read_vocab(write_vocab(tmp_path / "d.txt", [b"q", b"r", b"q"]), -1, what="d")


def test_vocab_mapping_is_vectorised_at_scale(tmp_path):
    n = 200_000
    toks = [b"tok%07d" % i for i in range(n)]
    perm = np.random.default_rng(0).permutation(n)
    old = vocab_mod.read_vocab(write_vocab(tmp_path / "o.txt", toks), -1, what="o")
    new = vocab_mod.read_vocab(
        write_vocab(tmp_path / "n.txt", [toks[i] for i in perm[: n // 2]] + [b"zz"]), -1, what="n"
    )
    got = vocab_mod.vocab_mapping(new, old)
    assert got[:-1].tolist() == perm[: n // 2].tolist() and got[-1] == -1


@pytest.fixture
def small(tmp_path):
    gpuload.reset_default_graph()
    old = np.arange(24, dtype=np.float32).reshape(6, 4)
    prefix = str(tmp_path / "c" / "model")
    gpuload.save_checkpoint(
        prefix,
        {"old/emb": old, "old/bias": old[:, 0].copy(), "old/step": np.int64(7), "old/emb64": old.astype(np.float64)},
    )
    old_v = write_vocab(tmp_path / "old.txt", [b"a", b"b", b"c", b"d", b"e", b"f"])
    new_v = write_vocab(tmp_path / "new.txt", [b"f", b"x", b"a", b"c"])
    return prefix, old_v, new_v, old, tmp_path


@pytest.mark.parametrize(
    "tokens, size, line, what",
    [
        ([b"f", b"x"], 4, None, "fewer than the 4"),
        ([b"f", b"", b"a", b"c"], 4, 2, "empty line"),
        ([b"f", b"x", b"f", b"c"], 4, 3, "repeats line 1"),
    ],
)
def test_bad_new_vocab_names_file_and_line(small, tokens, size, line, what):
    prefix, old_v, _, _, tmp_path = small
    bad = write_vocab(tmp_path / "bad.txt", tokens)
    make_var("new/emb", [size, 4], "float32")
    with pytest.raises(VocabFileError, match=what) as info:
        gpuload.warm_start(prefix, ".*", {"new/emb": gpuload.VocabInfo(bad, size, 0, old_v)}, {"new/emb": "old/emb"})
    msg = str(info.value)
    assert "bad.txt" in msg and "new/emb" in msg and "new_vocab" in msg
    if line is not None:
        assert f"line {line}" in msg and info.value.line == line
    assert isinstance(info.value, ValueError)
    gpuload.global_variables_initializer().run()  # nothing was scheduled
    assert all(v._init_source is None for v in gpuload.global_variables())


def test_bad_old_vocab_and_lengths(small):
    prefix, old_v, new_v, _, tmp_path = small
    make_var("new/emb", [4, 4], "float32")
    dup = write_vocab(tmp_path / "dup.txt", [b"a", b"b", b"a"])
    with pytest.raises(VocabFileError, match=r"dup\.txt, line 3.*old_vocab of variable 'new/emb'"):
        gpuload.warm_start(prefix, ".*", {"new/emb": gpuload.VocabInfo(new_v, 4, 0, dup)}, {"new/emb": "old/emb"})
    longer = write_vocab(tmp_path / "long.txt", [b"t%d" % i for i in range(9)])
    with pytest.raises(VocabFileError, match="has only 6 positions along axis 0"):
        gpuload.warm_start(prefix, ".*", {"new/emb": gpuload.VocabInfo(new_v, 4, 0, longer)}, {"new/emb": "old/emb"})
    # old_vocab_size takes only the first lines: fine then.
    gpuload.warm_start(prefix, ".*", {"new/emb": gpuload.VocabInfo(new_v, 4, 0, longer, 6)}, {"new/emb": "old/emb"})
    with pytest.raises(VocabFileError, match="missing.txt"):
        gpuload.warm_start(
            prefix,
            ".*",
            {"new/emb": gpuload.VocabInfo(str(tmp_path / "missing.txt"), 4, 0, old_v)},
            {"new/emb": "old/emb"},
        )


@pytest.mark.parametrize(
    "shape, vi, match",
    [
        (
            [5, 4],
            dict(new_vocab_size=4, num_oov_buckets=0),
            r"5 positions along axis 0.*\(4\) \+ num_oov_buckets \(0\) = 4",
        ),
        ([4, 3], dict(new_vocab_size=4, num_oov_buckets=0), "on axis 1"),
        ([4], dict(new_vocab_size=4, num_oov_buckets=0, axis=1), "no axis 1"),
        ([4, 4], dict(new_vocab_size=0, num_oov_buckets=0), "new_vocab_size must be an integer >= 1"),
        ([4, 4], dict(new_vocab_size=4, num_oov_buckets=-1), "num_oov_buckets"),
    ],
)
def test_shape_errors_at_the_call(small, shape, vi, match):
    prefix, old_v, new_v, _, _ = small
    make_var("new/emb", shape, "float32")
    with pytest.raises(WarmStartError, match=match) as info:
        gpuload.warm_start(
            prefix, ".*", {"new/emb": gpuload.VocabInfo(new_v, old_vocab=old_v, **vi)}, {"new/emb": "old/emb"}
        )
    assert "new/emb" in str(info.value)


def test_name_errors(small):
    prefix, old_v, new_v, _, _ = small
    make_var("new/emb", [4, 4], "float32")
    vi = gpuload.VocabInfo(new_v, 4, 0, old_v)
    with pytest.raises(WarmStartError, match="'new/embx'.*Close names: 'new/emb'"):
        gpuload.warm_start(prefix, ".*", {"new/emb": vi}, {"new/emb": "old/emb", "new/embx": "old/emb"})
    with pytest.raises(WarmStartError, match="var_name_to_vocab_info names variable.*'other'"):
        gpuload.warm_start(prefix, ".*", {"new/emb": vi, "other": vi}, {"new/emb": "old/emb"})
    with pytest.raises(WarmStartError, match="tensor 'old/nope' is not in checkpoint"):
        gpuload.warm_start(prefix, ".*", {"new/emb": vi}, {"new/emb": "old/nope"})
    with pytest.raises(ValueError, match="axis"):
        gpuload.VocabInfo(new_v, 4, 0, old_v, axis=2)
    with pytest.raises(WarmStartError, match="all `Variable` or all `str`"):
        gpuload.warm_start(prefix, ["new/emb", 3])
    with pytest.raises(WarmStartError, match="not a valid regular expression"):
        gpuload.warm_start(prefix, "new/(")
    with pytest.raises(WarmStartError, match="float32.*float64.*allow_cast"):
        gpuload.warm_start(prefix, ".*", {"new/emb": vi}, {"new/emb": "old/emb64"})


def test_selection_forms_and_trainable(small):
    prefix, old_v, new_v, old, _ = small
    emb = make_var("old/emb", [6, 4], "float32", trainable=False)
    bias = make_var("old/bias", [6], "float32", partitions=[2])
    # A regex string sees trainable variables only (old/bias parts), matching from the start.
    gpuload.warm_start(prefix, "old/b")
    gpuload.global_variables_initializer().run()
    np.testing.assert_array_equal(emb.numpy(), np.full((6, 4), -3, np.float32))
    np.testing.assert_array_equal(bias.numpy(), old[:, 0])
    # A list of regexes sees every variable.
    gpuload.reset_default_graph()
    emb = make_var("old/emb", [6, 4], "float32", trainable=False)
    gpuload.warm_start(prefix, ["old/e"])
    gpuload.global_variables_initializer().run()
    np.testing.assert_array_equal(emb.numpy(), old)
    # A list of variable objects: a part alone loads its slice; None: vocabulary variables only.
    gpuload.reset_default_graph()
    bias = make_var("old/bias", [6], "float32", partitions=[2])
    other = make_var("new/emb", [4, 4], "float32")
    gpuload.warm_start(prefix, [bias._get_variable_list()[1]])
    gpuload.warm_start(prefix, None, {"new/emb": gpuload.VocabInfo(new_v, 4, 0, old_v)}, {"new/emb": "old/emb"})
    gpuload.global_variables_initializer().run()
    np.testing.assert_array_equal(bias.numpy(), np.r_[np.full(3, -3, np.float32), old[3:, 0]])
    np.testing.assert_array_equal(other.numpy(), np.stack([old[5], np.zeros(4, np.float32), old[0], old[2]]))


@pytest.mark.parametrize(
    "dtype, src, allow_cast",
    [
        ("float64", "old/emb64", False),
        ("bfloat16", "old/emb", True),
        ("float16", "old/emb64", True),
        ("float32", "old/emb64", True),
    ],
)
def test_dtypes_and_casts(small, dtype, src, allow_cast):
    prefix, old_v, new_v, old, _ = small
    var = make_var("new/emb", [5, 4], dtype, partitions=[1, 2])
    gpuload.warm_start(
        prefix,
        ".*",
        {"new/emb": gpuload.VocabInfo(new_v, 4, 1, old_v, backup_initializer=gpuload.ones_initializer())},
        {"new/emb": src},
        allow_cast=allow_cast,
    )
    gpuload.global_variables_initializer().run()
    stored = old if src == "old/emb" else old.astype(np.float64)
    want = np.ones((5, 4), dtype=np.dtype(stored.dtype))
    want[[0, 2, 3]] = stored[[5, 0, 2]]
    have = value_of(var)
    assert have.dtype == np.dtype(BF16 if dtype == "bfloat16" else dtype)
    np.testing.assert_array_equal(have.astype(np.float64), want.astype(have.dtype).astype(np.float64))


def test_integer_one_d_vocab_axis_partitions(small, tmp_path):
    prefix, old_v, new_v, _, _ = small
    counts = np.arange(100, 106, dtype=np.int32)
    p2 = str(tmp_path / "c2" / "m")
    gpuload.save_checkpoint(p2, {"counts": counts})
    var = make_var("counts", [6], "int32", partitions=[3])
    gpuload.warm_start(
        p2, ".*", {"counts": gpuload.VocabInfo(new_v, 4, 2, old_v, backup_initializer=gpuload.constant_initializer(-1))}
    )
    gpuload.global_variables_initializer().run()
    np.testing.assert_array_equal(var.numpy(), [105, -1, 100, 102, -1, -1])


def test_random_backup_matches_the_initializer_on_the_part(small):
    prefix, old_v, new_v, old, _ = small
    init = gpuload.truncated_normal_initializer(stddev=0.1, seed=5)
    var = make_var("new/emb", [6, 4], "float32", partitions=[2, 1])
    gpuload.warm_start(
        prefix,
        ".*",
        {"new/emb": gpuload.VocabInfo(new_v, 4, 2, old_v, backup_initializer=init)},
        {"new/emb": "old/emb"},
    )
    gpuload.global_variables_initializer().run()
    from gpuload.graph.initializers import PartitionInfo

    parts = var._get_variable_list()
    b0 = init((3, 4), np.float32, PartitionInfo((6, 4), (0, 0)))
    b1 = init((3, 4), np.float32, PartitionInfo((6, 4), (3, 0)))
    np.testing.assert_array_equal(parts[0].numpy(), np.stack([old[5], b0[1], old[0]]))
    np.testing.assert_array_equal(parts[1].numpy(), np.stack([old[2], b1[1], b1[2]]))


def test_partitioned_golden_checkpoint(golden):
    """The golden ws_prev_partitioned_v (3 row slices, written by TensorFlow) remapped into 2 row parts."""
    gpuload.reset_default_graph()
    full = np.load(golden / "checkpoints" / "ws_prev_partitioned_v" / "expected.npz")["old/emb"]
    var = make_var("new/emb", [13, 4], "float32", partitions=[2, 1])
    vi = gpuload.VocabInfo(str(golden / "vocabs" / "new_v.txt"), 12, 1, str(golden / "vocabs" / "old_v.txt"))
    with config.set(verify_crc=False, gap_bytes=0):
        gpuload.warm_start(
            str(golden / "checkpoints" / "ws_prev_partitioned_v"), ".*", {"new/emb": vi}, {"new/emb": "old/emb"}
        )
        gpuload.global_variables_initializer().run()
    new_tokens = (golden / "vocabs" / "new_v.txt").read_bytes().split(b"\n")[:12]
    old_tokens = (golden / "vocabs" / "old_v.txt").read_bytes().split(b"\n")[:12]
    np.testing.assert_array_equal(var.numpy(), remap_reference(full, old_tokens, new_tokens, 1, 0, 0))


def test_plan_prints_gathers(small):
    prefix, old_v, new_v, _, _ = small
    var = make_var("new/emb", [5, 4], "float32", partitions=[2, 1])
    gpuload.warm_start(prefix, ".*", {"new/emb": gpuload.VocabInfo(new_v, 4, 1, old_v)}, {"new/emb": "old/emb"})
    _, plan = ops.plan_for(prefix, var._get_variable_list())
    text = str(plan)
    assert "gather copies" in plan.summary()
    assert "remapped along axis 0: 2 of 3 gathered" in text
    assert "gather -> dest 0: 2 boxes of shape (4,)" in text
    assert "gather -> dest 1: 1 boxes of shape (4,)" in text


def test_plan_computes_no_starting_values(small, monkeypatch):
    """A plan (nothing loaded) ran every remapped part's backup initializer."""
    from gpuload.graph.warm_start import VocabRemap

    prefix, old_v, new_v, old, _ = small
    var = make_var("new/emb", [5, 4], "float32", partitions=[2, 1])
    gpuload.warm_start(prefix, ".*", {"new/emb": gpuload.VocabInfo(new_v, 4, 1, old_v)}, {"new/emb": "old/emb"})

    def backup_value(self, var):
        raise AssertionError(f"planning computed the starting values of {var.op.name}")

    with monkeypatch.context() as m:
        m.setattr(VocabRemap, "backup_value", backup_value)
        _, plan = ops.plan_for(prefix, var._get_variable_list())
    assert "remapped along axis 0: 2 of 3 gathered" in str(plan)
    gpuload.global_variables_initializer().run()  # and the load itself still prefills
    value = var.numpy()
    assert value[0].tolist() == old[5].tolist()  # "f" is old row 5
    assert value[1].tolist() == [0.0] * 4  # "x" is not in the old vocabulary: the backup (zeros)


def test_plan_is_a_value(small):
    """Two plans of the same load compare equal; a different remap does not."""
    prefix, old_v, new_v, _, tmp_path = small
    var = make_var("new/emb", [5, 4], "float32", partitions=[2, 1])
    gpuload.warm_start(prefix, ".*", {"new/emb": gpuload.VocabInfo(new_v, 4, 1, old_v)}, {"new/emb": "old/emb"})
    parts = var._get_variable_list()
    _, a = ops.plan_for(prefix, parts)
    _, b = ops.plan_for(prefix, parts)
    assert a == b and str(a) == str(b)
    other = write_vocab(tmp_path / "other.txt", [b"a", b"x", b"f", b"c"])
    gpuload.warm_start(prefix, ".*", {"new/emb": gpuload.VocabInfo(other, 4, 1, old_v)}, {"new/emb": "old/emb"})
    _, c = ops.plan_for(prefix, parts)
    assert c != a


@pytest.mark.parametrize("crc, gap", [(True, 0), (False, 0), (False, 1 << 20)])
def test_one_tensor_feeds_a_remap_and_a_plain_load(tmp_path, crc, gap):
    """The same stored tensor is gathered into one variable and box-copied into another:
    its bytes are read once (each byte of the entry at most once) and both come out right."""
    gpuload.reset_default_graph()
    old = np.arange(6000 * 8, dtype=np.float32).reshape(6000, 8)
    prefix = save_old(tmp_path, old)
    toks = [b"t%d" % i for i in range(6000)]
    old_v = write_vocab(tmp_path / "o.txt", toks)
    new = toks[::-3]
    new_v = write_vocab(tmp_path / "n.txt", new)
    a = make_var("new/emb", [len(new) + 1, 8], "float32", partitions=[3, 2])
    b = make_var("copy/emb", [6000, 8], "float32", partitions=[2, 1])
    with config.set(verify_crc=crc, gap_bytes=gap, chunk_bytes=8192):
        gpuload.warm_start(
            prefix,
            [".*emb"],
            {"new/emb": gpuload.VocabInfo(new_v, len(new), 1, old_v)},
            {"new/emb": "old/emb", "copy/emb": "old/emb"},
        )
        gpuload.global_variables_initializer().run()
    want = remap_reference(old, toks, new, 1, 0, 0)
    np.testing.assert_array_equal(a.numpy(), want)
    np.testing.assert_array_equal(b.numpy(), old)
    assert loader.last_stats()[0].bytes_read == old.nbytes


def test_checkpoint_saved_again_before_run_is_refused(small):
    """The at-run() check of init_from_checkpoint covers remapped variables too: a checkpoint
    saved again between warm_start and run() is not gathered from unnoticed."""
    from gpuload.errors import CheckpointChangedError

    prefix, old_v, new_v, old, _ = small
    var = make_var("new/emb", [4, 4], "float32")
    gpuload.warm_start(prefix, ".*", {"new/emb": gpuload.VocabInfo(new_v, 4, 0, old_v)}, {"new/emb": "old/emb"})
    gpuload.save_checkpoint(prefix, {"old/emb": old + 1})  # a trainer saving the same prefix again
    with pytest.raises(CheckpointChangedError, match="index was replaced"):
        gpuload.global_variables_initializer().run()
    assert not var.is_initialized()


def test_axis_1_old_vocab_size_shorter_than_the_file_is_refused(tmp_path):
    """TensorFlow's _warm_start_var_with_vocab passes no old_vocab_size to the column remap
    (axis=1): it matches against the whole old file, where VocabInfo documents the first
    old_vocab_size lines. Where the two differ gpuload refuses; where they agree it loads."""
    gpuload.reset_default_graph()
    old = np.arange(12, dtype=np.float32).reshape(3, 4)  # 4 classes (columns) used
    prefix = save_old(tmp_path, old)
    long_old = write_vocab(tmp_path / "old5.txt", [b"a", b"b", b"c", b"d", b"e"])
    exact_old = write_vocab(tmp_path / "old4.txt", [b"a", b"b", b"c", b"d"])
    new_v = write_vocab(tmp_path / "new.txt", [b"d", b"x", b"a"])
    var = make_var("new/w", [3, 3], "float32")
    with pytest.raises(WarmStartError, match=r"old_vocab_size=4 with axis=1.*old5\.txt.*5 lines") as info:
        gpuload.warm_start(
            prefix, ".*", {"new/w": gpuload.VocabInfo(new_v, 3, 0, long_old, 4, axis=1)}, {"new/w": "old/emb"}
        )
    assert "new/w" in str(info.value) and isinstance(info.value, ValueError)
    assert var._init_source is None  # nothing scheduled
    want = np.stack([old[:, 3], np.zeros(3, np.float32), old[:, 0]], axis=1)
    for vi in (gpuload.VocabInfo(new_v, 3, 0, exact_old, 4, axis=1), gpuload.VocabInfo(new_v, 3, 0, exact_old, axis=1)):
        gpuload.warm_start(prefix, ".*", {"new/w": vi}, {"new/w": "old/emb"})
        gpuload.global_variables_initializer().run()
        np.testing.assert_array_equal(var.numpy(), want)


def test_plain_variables_load_from_the_checkpoint_the_vocab_ones_were_checked_against(tmp_path, monkeypatch):
    """warm_start(directory): the directory's latest checkpoint is resolved once. A checkpoint
    saved there in between (simulated right after that resolution) must not feed the plain
    variables while the vocabulary ones come from the first: one warm start, one step."""
    from gpuload.format import state

    gpuload.reset_default_graph()
    d = tmp_path / "run"
    old = np.arange(24, dtype=np.float32).reshape(6, 4)
    gpuload.save_checkpoint(str(d / "model.ckpt-1"), {"old/emb": old, "bias": np.ones(4, np.float32)})
    old_v = write_vocab(tmp_path / "old.txt", [b"a", b"b", b"c", b"d", b"e", b"f"])
    new_v = write_vocab(tmp_path / "new.txt", [b"f", b"x", b"a", b"c"])
    emb = make_var("new/emb", [4, 4], "float32")
    bias = make_var("bias", [4], "float32")
    real = state.resolve_prefix
    calls = []

    def resolve_then_a_trainer_saves(ckpt):
        got = real(ckpt)
        if not calls:  # step 2 lands in the directory just after warm_start resolved step 1
            gpuload.save_checkpoint(str(d / "model.ckpt-2"), {"old/emb": old + 100, "bias": np.full(4, 2, np.float32)})
        calls.append((str(ckpt), got))
        return got

    monkeypatch.setattr(state, "resolve_prefix", resolve_then_a_trainer_saves)
    gpuload.warm_start(str(d), ".*", {"new/emb": gpuload.VocabInfo(new_v, 4, 0, old_v)}, {"new/emb": "old/emb"})
    gpuload.global_variables_initializer().run()
    assert calls[0][1].endswith("model.ckpt-1")
    np.testing.assert_array_equal(emb.numpy(), np.stack([old[5], np.zeros(4, np.float32), old[0], old[2]]))
    np.testing.assert_array_equal(bias.numpy(), np.ones(4, np.float32))  # step 1, as the vocabulary variable
