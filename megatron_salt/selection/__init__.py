"""SALT_DS: SLM scores for documents, score sidecars, and KD-phase data selection."""
