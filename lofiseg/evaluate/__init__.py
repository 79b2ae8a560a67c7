"""Held-out scoring of trained models and pseudo labels against ground truth, one module per evaluation stage.

Plain arguments only (data sets, bundle paths, class names, inference settings): the stages read params and
write the outputs.
"""
