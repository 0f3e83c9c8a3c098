"""Quality control: per-sample scorers, filters and dataset-level indicators."""
