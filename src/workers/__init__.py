"""Conveyor workers: arq worker processes, one per queue."""
