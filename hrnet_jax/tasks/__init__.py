"""Tasks: each supplies a model, data, a loss, device-side outputs and a host-side evaluator."""
