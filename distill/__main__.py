"""`python -m distill rationales|train|eval ...` (also `accelerate launch -m distill train ...`)."""
import sys

from distill.cli import main

sys.exit(main())
