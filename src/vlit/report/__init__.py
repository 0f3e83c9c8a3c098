"""Indicator tables, comparison of datasets, and the HTML report."""
