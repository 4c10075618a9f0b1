"""Triton kernels: `sign` (projection and reconstruction) and `noise` (the meters' noise and error).

Imported only when the Triton backend runs, so stabkern imports without Triton installed.
"""
