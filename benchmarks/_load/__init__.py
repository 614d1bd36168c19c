"""Helpers of the load benchmarks (`benchmarks/serve_load.py`, `soak.py`, `retrieval.py`): request
inputs, starting and stopping servers, and driving them with `wrk` while reading CPU from /proc.
Not a benchmark itself."""
