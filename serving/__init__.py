"""A small implementation of TF Serving's gRPC API (PredictionService Predict / GetModelMetadata, ModelService
GetModelStatus) for the SavedModels written by tools.export, and a client that also works against the official
tensorflow_model_server. See README.md, section "Serving"."""
