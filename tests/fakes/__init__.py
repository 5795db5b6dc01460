"""The fakes every test area shares, one of each.

``canned`` holds the deterministic provider wire data, ``upstream`` the fake provider
(a twisted.web server), ``process`` runs it (and ``analysis``, a fake analysis model) as a
subprocess, ``rawhttp`` reads responses byte-exactly; ``local`` has the in-reactor servers
(``LocalServer``, the ``Receiver`` of webhooks and heartbeats) and ``closed_port``,
``recorder`` the threaded receiver the end-to-end tests point daemons at, and
``redisserver`` a private redis-server to stop and restart.
"""
