"""What the gateway and the workers both import: core (errors, JSON, settings, logging, metrics, status),
infra (PostgreSQL, Redis, the broker over arq's keys, events, sealing), ledger, files, accounts and
jobtypes (the typed job-definition module)."""
