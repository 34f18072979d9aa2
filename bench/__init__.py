"""The gateway's benchmark: see bench/README.md. `python -m bench [--quick]`."""
