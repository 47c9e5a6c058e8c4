"""The fault suite: the real processes under load while faults are injected, and a check
that nothing accepted was lost, no run was left behind and no effect happened twice.

`make chaos` runs every scenario at full size (python -m tests.chaos); `make test` runs a
bounded version of each (tests/test_chaos.py). See docs/reliability.md.
"""
