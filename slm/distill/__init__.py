"""Distilling step-by-step (Hsieh et al., 2023, "Distilling Step-by-Step! Outperforming Larger Language
Models with Less Training Data and Smaller Model Sizes", arXiv:2305.02301) for decoder-only students.

    teacher ─► rationales (JSONL store) ─► student training ─► HF checkpoint folder ─► export
    slm/distill/teachers, slm/distill/rationales.py   slm/distill/train.py     slm/distill/evaluate.py

Stages, one entry point each: `slm.distill.rationales.generate_rationales`, `slm.distill.train.train`,
`slm.distill.evaluate.evaluate_checkpoint`; on the command line `slm distill rationales|train|eval`.
Nothing is imported here, so `import distill` stays cheap.
"""
