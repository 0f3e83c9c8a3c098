"""Validation: SEED-Bench style evaluation, tuning hand-off, correlation and ICC."""
