"""Who may do what at the gateway: authentication, the access rule of every route, rate limits, client
addresses."""
