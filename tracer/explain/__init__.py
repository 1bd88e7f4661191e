"""Explanations of a Trace: the chain rule behind a gradient, hand checks, the diagnosis of vanishing
and exploding gradients, and the finite-difference gradient check."""
