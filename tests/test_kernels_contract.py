"""The copy contract (gpuload.backend.contract) against the kernels' headers, parsed as text.

No compiler is needed: the structs the kernels read, the variant list and the rank limit
are read from kernels/*.cuh and compared with the contract's NumPy layouts and tables.
(tests/test_kernels_host.py checks the same layouts once more through the g++ harness's
``offsetof``.)
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from gpuload.backend import contract, kernels
from gpuload.errors import PlanError
from gpuload.plan.copies import BoxCopy, GatherCopy

_C_TYPES = {"gl_i64": np.dtype("<i8"), "gl_u64": np.dtype("<u8")}
_FIELD_RE = re.compile(r"^\s*(?P<type>\w+)\s+(?P<name>\w+)\s*(?:\[\s*(?P<n>\w+)\s*\])?\s*;")


def _header(name: str) -> str:
    return (kernels.kernel_dir() / name).read_text()


def struct_dtype(text: str, name: str, known: dict[str, np.dtype]) -> np.dtype:
    """The NumPy image of ``struct <name> { ... };`` in ``text`` (fields of the types in ``known``).

    Array extents may be integers or macros with a default ``#define`` in ``text``.
    """
    m = re.search(rf"struct\s+{name}\s*\{{(?P<body>.*?)\}};", text, re.DOTALL)
    assert m is not None, f"struct {name} not found"
    fields = []
    for line in m.group("body").splitlines():
        line = line.split("//", 1)[0]
        if not line.strip():
            continue
        f = _FIELD_RE.match(line)
        assert f is not None, f"struct {name}: cannot parse field {line.strip()!r}"
        ctype = known[f.group("type")]
        n = f.group("n")
        if n is None:
            fields.append((f.group("name"), ctype))
        else:
            extent = int(n) if n.isdigit() else _macro(text, n)
            fields.append((f.group("name"), ctype, (extent,)))
    return np.dtype(fields)


def _macro(text: str, name: str) -> int:
    m = re.search(rf"^\s*#\s*define\s+{name}\s+(\d+)\s*$", text, re.MULTILINE)
    assert m is not None, f"no #define {name} in the header"
    return int(m.group(1))


def test_box_descriptor_is_the_struct_the_kernels_read():
    text = _header("box_copy.cuh")
    assert struct_dtype(text, "gpuload_box_desc", _C_TYPES) == contract.DESC_DTYPE


def test_gather_descriptor_is_the_struct_the_kernels_read():
    text = _header("box_copy.cuh") + _header("gather.cuh")
    box = struct_dtype(text, "gpuload_box_desc", _C_TYPES)
    known = {**_C_TYPES, "gpuload_box_desc": box}
    assert struct_dtype(text, "gpuload_gather_desc", known) == contract.GATHER_DESC_DTYPE


def test_the_parser_sees_a_changed_struct():
    """A reordered or retyped field, or another extent, gives another layout."""
    text = _header("box_copy.cuh")
    for old, new in [
        ("gl_i64 rank;", "gl_u64 rank;"),
        ("gl_i64 rank;        // 1 .. GPULOAD_MAX_RANK\n    gl_i64 count;", "gl_i64 count;\n    gl_i64 rank;"),
        ("gl_i64 dst_strides[GPULOAD_MAX_RANK];", "gl_i64 dst_strides[4];"),
    ]:
        assert old in text
        assert struct_dtype(text.replace(old, new), "gpuload_box_desc", _C_TYPES) != contract.DESC_DTYPE


def test_max_rank_is_the_headers_default_and_the_compile_define():
    assert _macro(_header("box_copy.cuh"), "GPULOAD_MAX_RANK") == contract.MAX_RANK
    assert ("GPULOAD_MAX_RANK", contract.MAX_RANK) in kernels.DEFINES


def test_variants_are_the_headers_list_in_order():
    text = _header("box_copy.cuh")
    body = re.search(r"#define GPULOAD_BOX_COPY_VARIANTS\(X\)(?P<body>(?:.*\\\n)*.*\n)", text).group("body")
    listed = tuple(re.findall(r"X\((\w+),\s*gl_conv_\1\)", body))
    assert listed == contract.VARIANTS


def test_every_kind_has_its_source():
    for kind in contract.KINDS:
        text = kernels.source(f"{kind}.cu")
        assert f"gpuload_{kind}_" in text
    assert contract.kind_of(BoxCopy(0, 0, (1,), 0, (1,), (1,))) == "box_copy"
    assert contract.kind_of(GatherCopy(0, [0], [0], (1,), (1,), (1,))) == "gather"


# -- the cast table ----------------------------------------------------------------------

FLOATS = [np.dtype(np.float16), contract.BF16, np.dtype(np.float32), np.dtype(np.float64)]


def test_casts_are_every_pair_of_floating_dtypes():
    assert set(contract.CASTS) == set(itertools.permutations(FLOATS, 2))
    assert len(set(contract.CASTS.values())) == len(contract.CASTS)


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(FLOATS + [np.dtype(np.int32)], repeat=2)))
def test_converts_is_the_table(src, dst):
    assert contract.converts(src, dst) == (src != dst and src.kind in "fV" and dst.kind in "fV")
    if src == dst:
        assert contract.cast_code(src, dst) == f"b{src.itemsize}_b{src.itemsize}"
    elif contract.converts(src, dst):
        assert contract.cast_code(src, dst) == contract.CASTS[(src, dst)]
    else:
        with pytest.raises(PlanError, match=f"no box-copy kernel converts {src} to {dst}"):
            contract.cast_code(src, dst)


def test_raw_copies_and_refusals():
    for dt in ("u1", "i2", "f4", "c8", "c16", "?"):
        assert contract.cast_code(dt, dt) in contract.VARIANTS
    assert not contract.converts(np.float32, np.dtype(">f4"))  # another byte order is not a cast
    for bad in (np.dtype(object), np.dtype("S3"), np.dtype("V3")):
        with pytest.raises(PlanError, match="1, 2, 4, 8 or 16 bytes"):
            contract.cast_code(bad, bad)
