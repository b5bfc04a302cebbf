"""latentserve training: PyTorch model zoo, trainer, export and publish into the models store."""
