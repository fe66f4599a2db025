"""Wasserstein neurons: collect neuron outputs, measure entanglement (WD, MD, polysemanticity),
ablate the neurons that matter, and check whether Sparse Expansion untangles them."""
