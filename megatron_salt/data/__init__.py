"""Data: Pile-format readers, the preprocessing pipeline, and the offline demo corpus.

Submodules are imported on use (``megatron_salt.data.preprocess`` pulls in Megatron-Core and
torch; the readers and the demo corpus do not).
"""
