"""Capacity search: the pure state machine, a search sweep's plan, replay and answer."""
