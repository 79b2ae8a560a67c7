"""MLflow models-from-code: the pyfunc of a registered lofiseg model. It imports only mlflow, numpy and torch.

:meth:`lofiseg.track.tracker.Tracker.log_served_model` passes this file's path as ``python_model``: MLflow
copies it into the model and runs it at load time (``mlflow.pyfunc.load_model``, ``mlflow models serve``), so
serving needs neither lofiseg nor pickled classes. lofiseg never imports it. The model's one artifact
(``segmenter``) is a TorchScript :class:`lofiseg.infer.served.ServedSegmenter`: images (N, H, W, 3) uint8 ->
label map (N, H, W) uint8, or probability (N, H, W) float32 for a saliency model.
"""

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

ARTIFACT = "segmenter"


class ServedSegmenterModel(PythonModel):
    def load_context(self, context):  # MLflow's interface: no type hints (they would become a signature)
        self.segmenter = torch.jit.load(context.artifacts[ARTIFACT], map_location="cpu").eval()

    def predict(self, context, model_input, params=None):
        images = torch.from_numpy(np.ascontiguousarray(np.asarray(model_input)))
        with torch.inference_mode():
            return self.segmenter(images).numpy()


mlflow.models.set_model(ServedSegmenterModel())
