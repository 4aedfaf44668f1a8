"""The flow-matching process: time convention, path, loss, samplers."""
