"""Evaluation building blocks shared by the `scl eval` engines: two-stage retrieval scoring, VQA files."""
