"""CPython's concurrent.futures tests, run on a Client (see test_concurrent_futures.py)."""
