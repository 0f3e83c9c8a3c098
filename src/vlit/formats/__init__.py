"""Dataset formats in and out: LLaVA, ShareGPT, MIMIC-IT, the paper's format, JSONL, Parquet."""
