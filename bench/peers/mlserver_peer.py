"""MLServer (bench/peers.py): our ONNX decoder as a custom MLModel, run with `mlserver start <folder>`.

The folder's model-settings.json names this class and the decoder file (`parameters.uri`); MLServer speaks
the Open Inference Protocol V2 on /v2/models/<name>/infer. One onnxruntime intra-op thread.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class Decoder(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            await get_model_uri(self.settings), opts, providers=["CPUExecutionProvider"]
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        z = NumpyCodec.decode_input(payload.inputs[0])  # (N, 8) float32
        (x_hat,) = self.session.run(["x_hat"], {"z": z})  # (N, 1, 8, 8)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("x_hat", x_hat)])
