"""slm/evals/: evaluation harnesses and their data (long-context retrieval under each KV policy).

Not part of the runtime an edge application installs; `slm eval` runs them."""
