"""Measurements of each stage's effect (fact completion, ...)."""
