"""Benchmarks: scripts that print figures and ratios (``python benchmarks/X.py``), and the GPU check, a package run
from the repository root as ``python -m benchmarks.gpu_check`` (the root is then on the path, so the check runs
from a bare checkout where the project is not installed)."""
