"""latentserve service: FastAPI + onnxruntime over the models store. Never imports torch or training."""
