"""sagakit's benchmarks: the harness behind ``sagakit bench`` and the peer comparisons (not installed)."""
