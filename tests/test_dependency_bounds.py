"""Every runtime and test dependency has a lower and an upper bound, and the lower bounds
are exactly what .ci/constraints-oldest.txt pins (the set CI runs the tests with)."""

from __future__ import annotations

import importlib.metadata
import re

from conftest import REPO
from packaging.requirements import Requirement
from packaging.version import Version


def _requirements(extra: str | None) -> dict[str, Requirement]:
    out = {}
    for text in importlib.metadata.requires("gpuload") or []:
        req = Requirement(text)
        marker = str(req.marker) if req.marker else ""
        in_extra = re.search(r'extra == "([^"]+)"', marker)
        if (in_extra.group(1) if in_extra else None) == extra:
            out[req.name.lower().replace("_", "-")] = req
    return out


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO / ".ci" / "constraints-oldest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = Version(version.strip())
    return pins


def _bounds(req: Requirement) -> tuple[Version | None, Version | None]:
    lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
    upper = [Version(s.version) for s in req.specifier if s.operator == "<"]
    return (lower[0] if lower else None), (upper[0] if upper else None)


def test_runtime_and_test_dependencies_are_bounded_and_pinned():
    pins = _pins()
    reqs = {**_requirements(None), **_requirements("test")}
    assert {"numpy", "ml-dtypes", "google-crc32c", "tqdm", "pytest", "hypothesis", "matplotlib"} <= set(reqs)
    for name, req in reqs.items():
        lower, upper = _bounds(req)
        assert lower is not None and upper is not None, f"{req}: needs a lower (>=) and an upper (<) bound"
        assert name in pins, f"{name} is not pinned in .ci/constraints-oldest.txt"
        assert pins[name] == lower, f"{name}: constraints-oldest pins {pins[name]}, pyproject's lower bound is {lower}"
    assert set(pins) == set(reqs), "constraints-oldest pins a package that is no dependency"


def test_every_extra_is_bounded():
    for extra in importlib.metadata.metadata("gpuload").get_all("Provides-Extra"):
        for req in _requirements(extra).values():
            lower, upper = _bounds(req)
            assert lower is not None and upper is not None, f"[{extra}] {req}: needs both bounds"
