"""Distilling step-by-step (Hsieh et al., 2023, "Distilling Step-by-Step! Outperforming Larger Language
Models with Less Training Data and Smaller Model Sizes", arXiv:2305.02301) for decoder-only students.

    teacher ─► rationales (JSONL store) ─► student training ─► HF checkpoint folder ─► export
    distill/teachers, distill/rationales.py   distill/train.py     distill/evaluate.py

Stages, one entry point each: `distill.rationales.generate_rationales`, `distill.train.train`,
`distill.evaluate.evaluate_checkpoint`; on the command line `slm distill rationales|train|eval`.
Nothing is imported here, so `import distill` stays cheap.
"""
