"""Test-time selection: retrieve candidates per prompt, pick with SIFT or a baseline."""
