"""The names the layer kinds' first home held, importable from here still: the protocol
(protocol.py), the recorded quantities (quantities.py), the excel face's shapes (excel.py), the sum
orders (sums.py), the normalisation maths (normalisation.py) and the TOML helpers (parsing.py)."""
from tracer.layers.excel import ExcelColumns, ExcelLayer  # noqa: F401
from tracer.layers.normalisation import Normalisation, normalise, normalise_backward  # noqa: F401
from tracer.layers.parsing import (ACTIVATION_PARAM_KEYS, INIT_PARAM_KEYS, Layer, parse_activation,  # noqa: F401
                                   parse_bias, parse_init)
from tracer.layers.passes import LayerPass, Signal  # noqa: F401
from tracer.layers.protocol import LayerKind, trace_value  # noqa: F401
from tracer.layers.quantities import A, COMMON, DELTA, E, H, PER, SLOPE, U, Quantity  # noqa: F401
from tracer.layers.sums import (IN_ORDER, LOOP_TERMS, MATMUL, SUM_BLOCK_CELLS, SUM_ORDERS, InOrder,  # noqa: F401
                                Matmul, SumOrder, back_sum, sample_product_sum, sum_in_order, sum_order,
                                weighted_sum)
