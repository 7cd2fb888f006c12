"""Generated stubs for microturn.v1 (regenerate with `make protos`)."""
