"""The ALMR study (arXiv 2409.06624): continual pre-training runs over a grid of additional-language
mixture ratio x learning rate on a small model, the best ALMR at each learning rate, and the fitted
relation between them, carried to the large model. See docs/ALMR.md.

    megatron-cpt almr sweep RECIPE --almr 0.1,0.2,0.33,0.5 --lr 1e-3,3e-3,1e-2 --out SWEEP_DIR
    megatron-cpt almr status SWEEP_DIR
    megatron-cpt almr fit SWEEP_DIR --objective constrained --tolerance 0.02
"""
