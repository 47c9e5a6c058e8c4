"""The live push: hints to connected browsers after a commit, and who is connected."""
