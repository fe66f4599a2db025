"""NCEn: ensembles whose members' input gradients are negatively correlated, attacked and compared.

Modules, one job each: `data` (digits / MiniLM plays in a [0, 1] box, ε from the data's scale),
`models` (members, the ensemble as log of averaged probabilities), `losses` (pure NCEn / ADP / GAL
terms), `methods` (the registry), `training`, `attacks` (torchattacks white-box + transfer),
`study`, `report` (tables, verdict, plots), `tie_in` (the same measurements on Sparse Expansion
experts and FPE children). Command: `sparse-expansion ncen`.
"""
