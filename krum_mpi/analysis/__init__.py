"""Analysis of krum-mpi studies: HDF5 results -> Dask/pandas tables -> figures -> report.

- ``load``: a study folder (or files) into a run table and lazy per-step Dask DataFrames.
- ``tables``: accuracy with confidence intervals, cost of resilience, time per phase, scaling.
- ``figures``: matplotlib figures (PNG and SVG).
- ``report``: ``krum-mpi report STUDY_DIR``.
"""
from .bench import read_bench
from .load import Study, load_study

__all__ = ["Study", "load_study", "read_bench"]
