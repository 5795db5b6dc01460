"""Fake LLM provider upstream used by the proxy's tests.

``canned`` holds the deterministic wire data, ``upstream`` the twisted.web
server, ``process`` runs it as a subprocess and ``rawhttp`` reads responses
byte-exactly.
"""
