"""Studies over many runs: sweeps of seeds, settings and remedies."""
