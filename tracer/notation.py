"""Math notation for headers: u₀⁽¹⁾, σ'(u₀⁽¹⁾), δ₀⁽²⁾, ∂E/∂W1[0,0]."""
_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_SUP = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def unit(symbol, layer, j):
    """`symbol` with unit j as subscript and (layer) as superscript: u₀⁽¹⁾."""
    return f"{symbol}{str(j).translate(_SUB)}⁽{str(layer).translate(_SUP)}⁾" if layer else f"{symbol}{str(j).translate(_SUB)}"


def sub(symbol, j):
    return f"{symbol}{str(j).translate(_SUB)}"


def layer(l):
    """The layer index as a superscript in parentheses: ⁽¹⁾."""
    return f"⁽{str(l).translate(_SUP)}⁾"
