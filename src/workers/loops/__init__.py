"""The background loops of a worker process: reconciler, retention, schedule firing, and their isolation."""
