"""The through-time faces of the recurrent kinds, importable from their first home: they live with
the kinds, in tracer/layers/recurrent/ (through_time.py, and chain.py for the gradient as a sum over
time and its report)."""
from tracer.layers.recurrent.chain import TimeChain, explain, explain_per_time, render, render_latex  # noqa: F401
from tracer.layers.recurrent.through_time import (WHICH, TimeNames, TimeRecord, contributions, delta_name,  # noqa: F401
                                                  elman, error_norms, factors, from_cell, gates_of, is_recurrent,
                                                  producer, record, scalar, step_factors, sum_over_time, symbolic,
                                                  sympy_value, through_time, time_values, unroll)
