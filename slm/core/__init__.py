"""slm.core: the package contract (package.py), per-user paths, errors, model sources and
resource measures. Stdlib only; imports no stage."""
