"""Who submits work: API keys (hashed, with roles and standing)."""
