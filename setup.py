"""Build configuration that pyproject.toml cannot express: kernels/ ships inside the package.

The CUDA sources stay in ``kernels/`` at the top of the repository (where nvcc, CI and the
host-harness tests use them) and install as ``gpuload/_kernels/*.cu`` / ``*.cuh``, where
``gpuload.backend.kernels`` finds them through ``importlib.resources``. The globs take every
kernel file, including ones added later. Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["gpuload", "gpuload.*"]), "gpuload._kernels"],
    package_dir={"gpuload._kernels": "kernels"},
    # py.typed: gpuload ships its type hints (PEP 561).
    package_data={"gpuload": ["py.typed"], "gpuload._kernels": ["*.cu", "*.cuh"]},
)
