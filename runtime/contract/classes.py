"""The seven expression classes, in the order every model, head and message uses."""

CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASSES)
EMBEDDING_DIM = 64


def class_index(label: str) -> int:
    """Index of `label` in CLASSES; ValueError naming the valid labels otherwise."""
    try:
        return CLASSES.index(label)
    except ValueError:
        raise ValueError(f"unknown label {label!r}; valid labels: {', '.join(CLASSES)}") from None
