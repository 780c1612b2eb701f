"""The reading side of an output: training dataset and batching, report, fidelity audit, verify.

Imports neither Ray nor the driver, so a training job imports only what it reads. It reads the run
state (commit records, manifest) through `pipeline.runstate`, which has no Ray either.
"""
