"""`system.echo`: the development handler."""
