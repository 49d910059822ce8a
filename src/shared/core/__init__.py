"""The vocabulary both processes speak, with no I/O: errors, JSON, settings, logging, metrics."""
