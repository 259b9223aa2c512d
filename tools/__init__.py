"""Scripts that serve the docs and the tests (not part of the mlplab package)."""
