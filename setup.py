"""Package list only (everything else is in pyproject.toml): kernels/ installs as `kvcomp_kernels`."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["kvcomp_vllm*"]), "kvcomp_kernels"],
    package_dir={"kvcomp_kernels": "kernels"},
)
