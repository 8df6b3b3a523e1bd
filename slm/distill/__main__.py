"""`python -m slm.distill rationales|train|eval ...` (also `accelerate launch -m slm.distill train ...`)."""
import sys

from slm.distill.cli import main

sys.exit(main())
