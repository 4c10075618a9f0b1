"""The stability card: one model's noise stability, bounds and compressibility on one data set.

- `build_card(model, x, y, ...)` -> `Card` (computation, build.py; `Card.doc` is the JSON of
  format stabkern-card-v1, documented in docs/card.md); x None: the data-free card (the weights alone)
- `write_card(card, folder)` writes folder/card.md, card.json, layers.csv and the PNG figures, all or nothing
- `summary_table([(name, doc), ...])`: the fixed-width table `stabkern demo` prints

Not a command line: `stabkern card` (stabkern/cli) loads the model and data and calls these.
"""

from .build import Card, build_card, compress_layer_by_layer
from .render import markdown, summary_table, write_card

__all__ = ["Card", "build_card", "compress_layer_by_layer", "markdown", "summary_table", "write_card"]
