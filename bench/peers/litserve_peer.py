"""LitServe (bench/peers.py): our ONNX decoder as a LitAPI, run as `python litserve_peer.py DECODER PORT`.

`LitServer(api).run(port=...)` with LitServe's defaults (one inference worker process beside the HTTP
server) on 127.0.0.1; POST /predict with {"z": [[8 floats], ...]} answers {"x_hat": (N, 1, 8, 8) lists}.
One onnxruntime intra-op thread. A second argument `fast_queue` turns on the ZeroMQ queue (an extra row).
"""

from __future__ import annotations

import sys

import litserve as ls
import numpy as np
import onnxruntime as ort


class DecoderAPI(ls.LitAPI):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def setup(self, device: str) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])

    def decode_request(self, request: dict) -> np.ndarray:
        return np.asarray(request["z"], dtype=np.float32)  # (N, 8)

    def predict(self, z: np.ndarray) -> np.ndarray:
        return self.session.run(["x_hat"], {"z": z})[0]  # (N, 1, 8, 8)

    def encode_response(self, x_hat: np.ndarray) -> dict:
        return {"x_hat": x_hat.tolist()}


if __name__ == "__main__":
    path, port, *extra = sys.argv[1:]
    server = ls.LitServer(DecoderAPI(path), fast_queue="fast_queue" in extra)
    server.run(host="127.0.0.1", port=int(port))
