"""How the towers' encoders run on this machine (:mod:`.onednn`: the one-device CPU kernels)."""
