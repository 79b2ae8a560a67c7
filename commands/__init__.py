"""Commands people run by hand: predict with a registered model, promote or roll back, compare runs."""
