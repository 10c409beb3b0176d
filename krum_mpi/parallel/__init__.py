"""The parallel layer: MPI (comm, the one module that imports mpi4py), rank groups, placements, sharded blocks, the split model."""
