"""Every figure the book shows, each drawn with seaborn from saved results.

One section per chapter; a function takes data (a DataFrame, a metrics dict) and returns a matplotlib Figure,
so notebooks only call it and tests can check it draws.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

sns.set_theme(style="whitegrid", context="notebook")


# ====================================================================== 00 data

# ====================================================================== 01 audit

# ====================================================================== 02 / 03 training

# ====================================================================== 04 evaluation
