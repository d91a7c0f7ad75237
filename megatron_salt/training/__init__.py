"""Training: the loop of pretrain_salt.py, its data, checkpoints and flags."""
