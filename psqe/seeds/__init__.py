"""Seed generators: PSQE's three stages, the Type I/II baselines, MIC and quality measures."""
