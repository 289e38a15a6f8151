"""The bundled sample: a mini-Pile, held-out prompts and an instruction pool."""
