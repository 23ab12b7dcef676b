"""Scaling laws: fitting L(N, D), IsoFLOP profiles, compute-optimal planning, sweeps, CLM->MLM transfer."""
