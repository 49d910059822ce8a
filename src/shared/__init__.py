"""Conveyor shared layer: settings, job registry, Redis/PostgreSQL helpers, ledger, mail, metrics, logging."""
