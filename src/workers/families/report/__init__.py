"""`report.generate`: the handler and its ledger query."""
