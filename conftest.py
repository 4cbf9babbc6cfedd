"""Pytest setup shared by tests/ and the doctests in tnsim/: a private path cache per run."""

import os
import tempfile

os.environ.setdefault("TNSIM_CACHE_DIR", tempfile.mkdtemp(prefix="tnsim-test-cache-"))
