"""The durable record in PostgreSQL: jobs, submissions, batches, schedules, queue state, owner caps,
notifications."""
