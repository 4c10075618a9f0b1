"""Per-layer tables of the reports: flat rows (one dict per layer), as a pandas DataFrame or a CSV file.

The reports build their rows (`StabilityReport.layer_rows`, `CompressionReport.layer_rows`, ...); here
are the two ways out that they share: `dataframe` (pandas, optional: imported only when called, an
ImportError saying so when absent; stabkern never requires it) and `csv_text` (the standard csv module:
what the card writes as layers.csv). Undefined numbers are None in a row, NaN in a DataFrame and an empty
cell in a CSV.
"""

from __future__ import annotations

import csv
import io
import math


def flat(d: dict, prefix: str = "") -> dict:
    """A nested dict with its inner dicts' keys joined by "_" ({"mu": {"min": 1}} -> {"mu_min": 1}); lists
    are kept as they are."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, f"{name}_"))
        else:
            out[name] = value
    return out


def pandas(what: str):
    """The pandas module, imported now; an ImportError saying that `what`.to_dataframe() needs it otherwise."""
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError(f"{what}.to_dataframe() needs pandas, which stabkern does not require: `pip install "
                          f"pandas`, or use {what}.to_dict()") from err
    return pd


def dataframe(rows: list, what: str, index: str | None = "layer"):
    """rows (dicts) as a pandas DataFrame indexed by the `index` column; ImportError naming `what` without pandas."""
    df = pandas(what).DataFrame.from_records(rows)
    return df.set_index(index) if index is not None and index in df.columns else df


def columns_of(rows: list) -> list:
    """The union of the rows' keys, in first-seen order."""
    seen: dict = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def csv_text(rows: list) -> str:
    """rows (dicts) as CSV text: a header of columns_of(rows), one line per row, floats written exactly
    (repr: they read back to the same float), undefined values as empty cells."""
    buf = io.StringIO()
    columns = columns_of(rows)
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buf.getvalue()
