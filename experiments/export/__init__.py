"""A recommendation exported as a server config, and an exported config read back."""
