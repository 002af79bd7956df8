"""Runners: one module per backend (eager, hf, compile, ort, trt), each loading an Artifact to run."""
