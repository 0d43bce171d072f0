"""The experiment definition that training, generation and evaluation share.

``config`` (the typed config sections of an experiment), ``build`` (the objective and
inference-model builders), ``regression`` (the regression objective and mean), ``residual``
(residual diffusion on top of a regression run), ``conditioning`` (what the model is
conditioned on) and ``tiling`` (where a rank's patches lie on the grid).
"""
