"""Quality control: per-sample scorers, filters and dataset-level indicators.

Per sample (each a stage with ``setup()`` and ``__call__(batch)``): ``matching`` (CLIP/SigLIP
matching degree, MD), ``judge`` (LLM correctness, C), ``grounding`` (claims checked against the
image's annotations), ``lint`` and ``dedup`` (structure, refusals, leaks, language, duplicates).
``filtering`` turns scores into keep/drop decisions with reasons; ``pipeline`` runs all of it
over a run directory (`vlit score`, `vlit filter`). Dataset-level indicators live in
``indicators``. Modules are imported where used, so importing this package stays light.
"""
