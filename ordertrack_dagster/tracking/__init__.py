"""The tracking concern: selection, mapping, the MongoDB write, and their assets."""
