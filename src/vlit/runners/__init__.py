"""Runners: local (reference semantics) and Ray Data; they know only the stage contract."""
