"""Evaluations of the selections: fine-tune, score, summarise."""
