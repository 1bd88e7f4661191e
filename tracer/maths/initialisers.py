"""Initialisers: name -> parameter defaults and a sampler.

Each sampler draws an array of `shape` from `rng` given fan_in and fan_out:
  uniform(low, high)   U(low, high)
  normal(mean, std)    N(mean, std)
  xavier_uniform       U(−√(6/(n_in+n_out)), +√(6/(n_in+n_out)))
  xavier_normal        N(0, √(2/(n_in+n_out)))
  he_uniform           U(−√(6/n_in), +√(6/n_in))
  he_normal            N(0, √(2/n_in))
  constant(value)      every entry = value
  explicit             the values written in the scenario (handled by the scenario)
"""
import math

import numpy as np

INITS = {
    "uniform": ({"low": 0.0, "high": 1.0}, lambda rng, shape, n_in, n_out, p: rng.uniform(p["low"], p["high"], shape)),
    "normal": ({"mean": 0.0, "std": 1.0}, lambda rng, shape, n_in, n_out, p: rng.normal(p["mean"], p["std"], shape)),
    "xavier_uniform": ({}, lambda rng, shape, n_in, n_out, p: rng.uniform(-1, 1, shape) * math.sqrt(6.0 / (n_in + n_out))),
    "xavier_normal": ({}, lambda rng, shape, n_in, n_out, p: rng.normal(0.0, math.sqrt(2.0 / (n_in + n_out)), shape)),
    "he_uniform": ({}, lambda rng, shape, n_in, n_out, p: rng.uniform(-1, 1, shape) * math.sqrt(6.0 / n_in)),
    "he_normal": ({}, lambda rng, shape, n_in, n_out, p: rng.normal(0.0, math.sqrt(2.0 / n_in), shape)),
    "constant": ({"value": 0.0}, lambda rng, shape, n_in, n_out, p: np.full(shape, float(p["value"]))),
    "explicit": ({}, None),
}
