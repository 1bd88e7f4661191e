"""The maths every layer reads: activations, losses, optimisers, batch procedures, initialisers,
IEEE edge cases, the notation of headers and the lazily imported sympy."""
