"""Adapters: the SQL retry table, the Kei-MOTAS certificate registry, the examination gateway."""
