"""`notification.push`: the handler."""
