"""The office console: a web page per office behind a login, operator pages, metrics."""
