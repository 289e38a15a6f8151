"""Prefect artifacts and PNG plots."""
