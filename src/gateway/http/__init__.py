"""HTTP plumbing of the gateway: problem+json errors, responses and resources, query parameters, SSE,
middlewares."""
