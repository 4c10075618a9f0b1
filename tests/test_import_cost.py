"""`import stabkern` stays cheap: every command-line run and every user script pays it.

scipy.stats alone costs seconds to import (it was pulled in at import time by stability.report for one
Student-t quantile); it is imported where that quantile is computed. Run in a fresh interpreter, since this
process has long imported everything.
"""

import subprocess
import sys


def test_import_stabkern_does_not_import_scipy_stats():
    code = "import sys, stabkern; print(sorted(m for m in ('scipy.stats', 'torch._dynamo') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stdout
