"""Data sets shipped with tracer, as package data beside the built-in templates.

digits(): the 8×8 handwritten digits, a copy of the test set of UCI's "Optical Recognition of
Handwritten Digits" (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0; the same 1,797 rows scikit-learn
ships as load_digits): 32×32 bitmaps cut into 4×4 blocks, each block's count of set pixels, so
64 integers 0..16 per image. The file, templates/data/digits.csv, has a header
(pixel_0_0 … pixel_7_7 row by row, digit, is_0 … is_9), one image a row, its digit and the digit
one-hot, so a scenario's [data] can name input_columns and target_columns directly.
"""
from tracer.training import inputs, templates

DIGITS_FILE = "digits.csv"
PIXELS = tuple(f"pixel_{row}_{column}" for row in range(8) for column in range(8))
ONE_HOT = tuple(f"is_{digit}" for digit in range(10))


def digits():
    """(pixels, labels): pixels a float array (1797, 64) of integers 0..16, the image read row by
    row; labels an int array (1797,) of the digits 0..9."""
    import numpy as np

    rows = inputs.read_csv(templates.data_file(DIGITS_FILE))
    header, body = rows[0], rows[1:]
    table = np.array(body, dtype=float)
    pixels = table[:, [header.index(name) for name in PIXELS]]
    labels = table[:, header.index("digit")].astype(int)
    return pixels, labels
