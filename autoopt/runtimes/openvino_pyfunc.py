"""An exported OpenVINO model as an MLflow pyfunc ("models from code"): MLflow copies this file into
the logged model and runs it where the model is loaded, so it imports only mlflow, openvino and numpy,
never autoopt. Inputs: a dict of arrays by input name (or a list in input order); outputs: a list of
arrays in the order of the bundle's output paths."""

import mlflow


class OpenVINOModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import openvino

        self.compiled = openvino.Core().compile_model(context.artifacts["model_xml"], "CPU",
                                                      {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
        self.names = [port.get_any_name() for port in self.compiled.inputs]

    def predict(self, context, model_input, params=None):
        arrays = [model_input[name] for name in self.names] if isinstance(model_input, dict) else list(model_input)
        results = self.compiled.create_infer_request().infer(arrays)
        return [results[port] for port in self.compiled.outputs]


mlflow.models.set_model(OpenVINOModel())
