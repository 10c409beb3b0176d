"""krum-mpi: Byzantine-robust aggregation benchmarks with MPI."""
__version__ = "0.1.0"
