"""Adapters that put stabkern behind other libraries' interfaces; each is optional.

- `stabkern.adapters.traker.StabkernProjector`: traker's (TRAK data attribution) projector interface
  on `sign_project`. Import it explicitly; it needs `pip install traker`, stabkern itself does not.
- `stabkern.adapters.lightning.StabilityCallback`: a StabilityMonitor stepped by a Lightning Trainer
  (a Lightning Callback when lightning imports, a plain class with the same hook otherwise).
Nothing is imported here, so `import stabkern` never needs these libraries.
"""
