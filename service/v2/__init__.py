"""Open Inference Protocol (KServe V2): tensor codec, schemas and router.

Each graph of a stored model is one V2 model named `<model>.<graph>`.
"""
