"""Parts of the retrieval benchmark (`benchmarks/retrieval.py`): the synthetic vectors, the HTTP
measurements through `momo serve`, and the store measurements (ingest growth, search). Not a
benchmark itself."""
