"""Analysis of krum-mpi studies: HDF5 results -> Dask/pandas tables -> figures -> report.

- ``load``: a study folder (or files) into a run table and lazy per-step Dask DataFrames
  (``runtable``: one file's row; ``derived``: labels and experiment keys).
- ``tables``: accuracy with confidence intervals, cost of resilience, time per phase, scaling.
- ``figures``: matplotlib figures (PNG and SVG).
- ``report``: ``krum-mpi report STUDY_DIR`` (``sections``: one function per section; ``answers``: the
  sentences and tables behind them; ``markup``: Markdown / HTML).
- ``read_bench``: a ``krum-mpi bench aggregate`` file as a table (format: ``krum_mpi.bench.schema``).
"""
from ..bench.schema import read_frame as read_bench
from .load import Study, load_study

__all__ = ["Study", "load_study", "read_bench"]
