"""Connections and wire formats: PostgreSQL (pool, migrations), Redis (cache db 0, jobs db 1), the broker over
arq's keys and its claim script, pub/sub events, sealing of secret fields, keyset pages, listeners."""
