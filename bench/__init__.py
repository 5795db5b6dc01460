"""The project's benchmark: mnemomd against a direct call and nginx, side by side.

Run ``python bench/run.py``; see bench/README.md.
"""
