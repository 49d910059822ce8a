"""`dataset.analyze`: the handler, the CSV engine and the killable CPU pool it runs in."""
