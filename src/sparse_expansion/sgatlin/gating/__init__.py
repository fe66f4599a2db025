"""A look inside a trained sgatlin model: which neurons the router picks, for which tokens, and
whether those picks carry facts.

Modules, in the order the look runs them (`study.look_inside`):
`record` (hooks on each layer's `ffn.router`, a named hook site: record and patch routing),
`measure` (usage, the token × neuron gating matrix, nearest gating neighbours with their text,
co-activation), `causal` (facts of the training text and the router-patching test), `plots`,
`report` (report.md), `study` (the whole look, as files).
"""
