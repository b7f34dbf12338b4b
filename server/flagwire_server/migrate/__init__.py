"""Converters from other flag systems' data into flagwire documents (pure, no I/O)."""
