"""Benchmarks: the aggregation kernels against their floors, the GPU check, the bench file schema."""
