"""The `stabkern` command line (`python -m stabkern`): main.py parses, commands.py runs, inputs.py
loads and checks MODEL, DATA, --device and --out. Not a library API: call stabkern.measure,
stabkern.compress_model and stabkern.card from Python instead (docs/tooling.md)."""
