"""The run: the one step loop, server and workers, stops, checkpoint, results, resume, provenance, preflight, progress."""
