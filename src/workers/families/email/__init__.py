"""`email.send`: the handler, the SMTP sender, the sent-mail log, templates and link checks."""
