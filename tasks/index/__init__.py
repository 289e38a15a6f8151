"""The corpus index: building it, its vector store, searching it."""
