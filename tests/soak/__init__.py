"""Model-based fault soak of the upload bridge (issue 11): tests/soak/driver.py explains the
design; tests/e2e/test_soak.py runs a bounded version in `make test`; `make soak`
(`python -m tests.soak`) runs the long one and prints a report."""
