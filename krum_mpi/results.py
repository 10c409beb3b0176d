"""The results file's reader and writer under their first public name (``krum_mpi.results``); the
module itself is ``krum_mpi.run.results``, beside the step loop that writes it."""
from .run.results import PER_STEP, ResultsWriter, read_run  # noqa: F401
