"""KServe's ModelServer (bench/peers.py): our ONNX decoder as a kserve.Model, run as `python kserve_peer.py
--model_name NAME --model_path decoder.onnx --http_port P --grpc_port G`, as KServe's custom-model docs do.

It speaks the Open Inference Protocol V2 on /v2/models/NAME/infer. One onnxruntime intra-op thread.
"""

from __future__ import annotations

import argparse

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.utils.utils import generate_uuid


class Decoder(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        self.ready = True

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        z = payload.inputs[0].as_numpy()  # (N, 8) float32
        (x_hat,) = self.session.run(["x_hat"], {"z": z})  # (N, 1, 8, 8)
        out = InferOutput(name="x_hat", shape=list(x_hat.shape), datatype="FP32", data=x_hat)
        return InferResponse(
            response_id=payload.id or generate_uuid(), model_name=self.name, infer_outputs=[out]
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    ModelServer().start([Decoder(args.model_name, args.model_path)])
