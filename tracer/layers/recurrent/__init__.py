"""The recurrent layer kinds: the through-time faces once (base.py: scenario, records, numpy and pass
faces; excel.py: the sheet unrolled through time; through_time.py and chain.py: the gradient as a
sum over time, hand-check rules, diagnose's error norms), and the cells as their gates and
equations (rnn.py, lstm.py, gru.py; the maths they share in cell.py)."""
from tracer.layers.recurrent.base import Recurrent  # noqa: F401
from tracer.layers.recurrent.gru import Gru  # noqa: F401
from tracer.layers.recurrent.lstm import Lstm  # noqa: F401
from tracer.layers.recurrent.rnn import Rnn  # noqa: F401
