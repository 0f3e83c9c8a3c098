"""One module per pipeline stage, each the one home of that stage.

``collect``, ``generate``, ``score``, ``filter``, ``report`` and ``export`` each own one
settings model (the recipe's section of that name, and the defaults of the command's options),
one ``run(run, settings, runner)`` returning a typed summary, and the reading and writing of
the run directory the stage does. The domain logic they call stays in its package
(`vlit.collect`, `vlit.generate`, `vlit.quality`, `vlit.report`, `vlit.formats`).
``run_all.run_recipe`` runs a recipe's stages in order (`vlit run`); ``base`` holds what they
share.
"""
