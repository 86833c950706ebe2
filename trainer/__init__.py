"""infantino.trainer: datasets, extractor training, online head, conformal calibration, MLflow, update service."""


def __getattr__(name):  # lazy: `from infantino.trainer import CustomTrainer` without importing torch up front
    if name == "CustomTrainer":
        from .custom_trainer import CustomTrainer  # lazy on purpose (PEP 562, see above)

        return CustomTrainer
    raise AttributeError(name)
