"""Handing selections to annotators (files, Label Studio) and collecting answers."""
