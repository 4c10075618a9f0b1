"""Peak resident memory of a piece of code, measured in a fresh Python process (Linux).

`peak_run(body)` runs `body` in a subprocess after a prelude that defines `status_mib(key)` (a line of
/proc/self/status in MiB) and `reset_peak()` (lowers the high-water mark VmHWM to the current RSS through
/proc/self/clear_refs and returns it), and returns the fields the body printed. Where the kernel does not
let a process reset its peak, the calling test is skipped. (ru_maxrss would also keep the RSS of the forking
pytest process from before exec, so the peak is read from VmHWM.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
def status_mib(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith(key + ":"))

def reset_peak():  # lowers the high-water mark to the current RSS (Linux >= 4.0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        print("no-reset")
        raise SystemExit(0)
    return status_mib("VmHWM")
"""

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")


def peak_run(body: str, timeout: int = 300) -> list[str]:
    """The whitespace-separated fields `body` printed; skips the test where the peak cannot be reset."""
    code = PRELUDE + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    assert res.returncode == 0, res.stderr
    if res.stdout.strip() == "no-reset":
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    return res.stdout.split()
