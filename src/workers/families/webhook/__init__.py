"""`webhook.deliver`: the handler, the wire format and signatures, the circuit breaker, the outbound guard."""
