"""Bridges from other frameworks: a PyTorch model as a tracer Scenario."""
