"""Open Inference Protocol (KServe V2): tensor codec, schemas and router. Each graph is a model `<model>.<graph>`."""
