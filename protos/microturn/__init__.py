"""microturn.v1 protocol package."""
