"""Who submits work: the roles (one vocabulary for JWTs and API keys) and API keys (hashed, with their
standing)."""
