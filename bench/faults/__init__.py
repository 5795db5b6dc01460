"""Fault-injection probes: the daemon under storage outages, crashes, signals, hostile and
slow clients and sustained load. ``python -m bench.faults <probe> [--quick]``."""
