"""Adapters that put stabkern's sign ops behind other libraries' interfaces; each is optional.

- `stabkern.adapters.traker.StabkernProjector`: traker's (TRAK data attribution) projector interface
  on `sign_project`. Import it explicitly; it needs `pip install traker`, stabkern itself does not.
Nothing is imported here, so `import stabkern` never needs these libraries.
"""
