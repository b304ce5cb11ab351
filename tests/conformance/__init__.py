"""Conformance: CPython's own `test.test_asyncio` suites, run on ferroloop and on the standard
loop, compared test by test. Entry point: `cd tests && python -m conformance.run`."""
