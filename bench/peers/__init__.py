"""Peer scripts: each runs in its own virtual environment as `PYTHON bench/peers/NAME.py JOB.json`."""
