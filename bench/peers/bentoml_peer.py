"""BentoML (bench/peers.py): our ONNX decoder as a BentoML service, run as `bentoml serve bentoml_peer:Decoder
--port P` from this folder, with the decoder's path in DECODER_ONNX.

POST /decode with {"z": [[8 floats], ...]} answers the (N, 1, 8, 8) array as JSON lists. BentoML's defaults
(one worker process under its supervisor); one onnxruntime intra-op thread.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import onnxruntime as ort


@bentoml.service
class Decoder:
    def __init__(self) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.environ["DECODER_ONNX"], opts, providers=["CPUExecutionProvider"]
        )

    @bentoml.api
    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.session.run(["x_hat"], {"z": z.astype(np.float32)})[0]  # (N, 8) -> (N, 1, 8, 8)
