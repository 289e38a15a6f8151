"""Instruction pools: reading and storing items, LM scores and prompt embeddings."""
