"""A training run: the scenario (TOML -> Scenario), its inputs and templates, the engine that trains
it one scalar at a time, and the Trace that records every quantity."""
