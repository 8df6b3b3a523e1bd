"""slm/megabyte/: byte-level models trained from scratch — MEGABYTE (Yu et al. 2023) and the flat
byte-level transformer it is compared with (model.py), their training loop (train.py) and the
checkpoint folder export reads (checkpoint.py). See docs/MEGABYTE.md."""
