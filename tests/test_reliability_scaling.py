"""No quadratic work on the index (issue 7, part B, item 7).

Assertions are on operation counts, not wall time (the times are printed): a quadratic
path would take minutes at these sizes, and a SIGALRM guard turns that into a failure
after 120 s instead of a stuck job.
"""

from __future__ import annotations

import difflib
import itertools
import random
import signal
import time

import numpy as np
import pytest

import gpuload
from gpuload.format import names as names_mod
from gpuload.format.bundle import Bundle
from gpuload.format.slices import Box, find_overlap


@pytest.fixture
def guard():
    def boom(*_):
        raise TimeoutError("took minutes: quadratic?")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def intersections(monkeypatch):
    count = [0]
    real = Box.intersect

    def counting(self, other):
        count[0] += 1
        return real(self, other)

    monkeypatch.setattr(Box, "intersect", counting)
    return count


N = 16000


def test_16000_column_slices_open_and_save_linearithmic(tmp_path, guard, intersections):
    pieces = [(Box((0, j), (2, 1)), np.full((2, 1), j, np.float32)) for j in range(N)]
    prefix = str(tmp_path / "cols")
    t = time.perf_counter()
    gpuload.save_checkpoint(prefix, slices={"t": pieces})
    t_save = time.perf_counter() - t
    saved = intersections[0]
    t = time.perf_counter()
    b = Bundle.open(prefix)
    t_open = time.perf_counter() - t
    opened = intersections[0] - saved
    print(
        f"\n16,000 column slices: save {t_save:.2f} s ({saved} intersections), "
        f"open {t_open:.2f} s ({opened} intersections)"
    )
    assert len(b.pieces("t")) == N
    # all pairs would be N*(N-1)/2 = 128 million
    assert saved <= 20 * N and opened <= 20 * N, (saved, opened)


def test_16000_row_slices_save(tmp_path, guard, intersections):
    pieces = [(Box((i, 0), (1, 3)), np.full((1, 3), i, np.int32)) for i in range(N)]
    prefix = str(tmp_path / "rows")
    t = time.perf_counter()
    gpuload.save_checkpoint(prefix, slices={"t": pieces})
    print(f"\n16,000 row slices: save {time.perf_counter() - t:.2f} s ({intersections[0]} intersections)")
    assert intersections[0] <= 20 * N
    np.testing.assert_array_equal(gpuload.load_variable(prefix, "t")[:, 0], np.arange(N))


def _brute(boxes):
    boxes = [b for b in boxes if all(b.shape)]
    for a, b in itertools.combinations(boxes, 2):
        if a.intersect(b) is not None:
            return True
    return False


@pytest.mark.parametrize("seed", range(40))
def test_find_overlap_agrees_with_all_pairs(seed):
    rng = random.Random(seed)
    rank = rng.randint(1, 3)
    shape = [rng.randint(1, 12) for _ in range(rank)]
    cuts = [sorted(rng.sample(range(1, n), min(n - 1, rng.randint(0, 4)))) if n > 1 else [] for n in shape]
    edges = [[0, *c, n] for c, n in zip(cuts, shape)]
    boxes = [
        Box(tuple(e[i] for e, i in zip(edges, idx)), tuple(e[i + 1] - e[i] for e, i in zip(edges, idx)))
        for idx in itertools.product(*[range(len(e) - 1) for e in edges])
    ]
    rng.shuffle(boxes)
    if seed % 2:  # perturb: grow, move or duplicate a box
        i = rng.randrange(len(boxes))
        b = boxes[i]
        d = rng.randrange(rank)
        start, size = list(b.start), list(b.shape)
        kind = seed % 3
        if kind == 0:
            size[d] += 1
        elif kind == 1:
            start[d] = max(0, start[d] - 1)
        boxes.append(Box(tuple(start), tuple(size)))
    found = find_overlap(boxes)
    assert (found is not None) == _brute(boxes), boxes
    if found is not None:
        assert found[0].intersect(found[1]) is not None


def test_name_hints_look_at_a_bounded_candidate_set(tmp_path, monkeypatch, guard):
    names = [f"layer_{i}/kernel" for i in range(100000)] + [f"layer_{i}/bias" for i in range(100000)]
    seen = []
    real = difflib.get_close_matches

    def spy(word, possibilities, *a, **kw):
        seen.append(len(possibilities))
        return real(word, possibilities, *a, **kw)

    monkeypatch.setattr(difflib, "get_close_matches", spy)
    t = time.perf_counter()
    assert names_mod.close_matches("layer_77/kernal", names)[0] == "layer_77/kernel"
    assert names_mod.close_matches("layr_77/kernel", names)[:1] == ["layer_77/kernel"]
    print(f"\nhint over 200,000 names: {time.perf_counter() - t:.3f} s, difflib saw {seen}")
    assert seen and max(seen) <= names_mod.CANDIDATE_LIMIT


def test_missing_key_hint_in_a_big_checkpoint(tmp_path, guard, monkeypatch):
    prefix = str(tmp_path / "many")
    gpuload.save_checkpoint(prefix, {f"scope_{i // 100}/v{i}": np.zeros(1, np.int8) for i in range(30000)})
    seen = []
    real = difflib.get_close_matches
    monkeypatch.setattr(
        difflib, "get_close_matches", lambda w, p, *a, **k: (seen.append(len(p)), real(w, p, *a, **k))[1]
    )
    with pytest.raises(gpuload.errors.CheckpointNotFoundError, match="scope_12/v1234"):
        Bundle.open(prefix).entry("scope_12/v12345")
    assert seen and max(seen) <= names_mod.CANDIDATE_LIMIT


def test_an_overlap_among_16000_slices_is_found(tmp_path, guard):
    pieces = [(Box((0, j), (2, 1)), np.full((2, 1), j, np.float32)) for j in range(N)]
    pieces.append((Box((1, 7000), (1, 2)), np.zeros((1, 2), np.float32)))
    with pytest.raises(ValueError, match=r"slices \[0:2, 7000:7001\] and \[1:2, 7000:7002\] overlap"):
        gpuload.save_checkpoint(str(tmp_path / "bad"), slices={"t": ((2, N), pieces)})
