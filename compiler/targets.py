"""The one table of compile targets: formats, precisions, layout per format and the default backend.

A target is a named profile, like a row of Ultralytics' export table: adding a device family is one row here
(its formats must be registered in compiler.formats). `--formats` and `--precision` narrow or change a profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .choices import check_choice


@dataclass(frozen=True)
class Target:
    """A device family: what to build for it by default and which backend its runtime should pick first."""

    name: str
    description: str
    formats: tuple[str, ...]
    precisions: dict[str, tuple[str, ...]]  # format -> default precisions built for it
    default_precision: str  # the manifest's `precision`: what the device runs by default
    default_backend: str  # runtime backend name (infantino.runtime.backends)
    layouts: dict[str, str] = field(default_factory=dict)  # format -> input layout of its artifacts

    def layout(self, fmt: str) -> str:
        return self.layouts.get(fmt, "NCHW")


# name: formats / precisions / layout / default backend. ONNX is always built first: it is the fp32 source of
# every other format and the bundle's portable fallback.
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="x64",
            description="x86-64 CPU servers and PCs: onnxruntime, LiteRT as alternative",
            formats=("onnx", "tflite"),
            precisions={"onnx": ("fp32",), "tflite": ("fp32", "fp16", "int8")},
            default_precision="fp32",
            default_backend="onnxruntime",
            layouts={"onnx": "NCHW", "tflite": "NHWC"},
        ),
        Target(
            name="arm64",
            description="ARM64 CPUs (Raspberry Pi, phones, SBCs): LiteRT with XNNPACK",
            formats=("onnx", "tflite"),
            precisions={"onnx": ("fp32",), "tflite": ("fp32", "fp16", "int8")},
            default_precision="fp16",  # fp32 accuracy at half the size; XNNPACK runs fp16 natively on ARMv8.2+
            default_backend="tflite",
            layouts={"onnx": "NCHW", "tflite": "NHWC"},
        ),
        Target(
            name="jetson",
            description="NVIDIA Jetson / GPUs: TensorRT engine built (or cached) for the device's GPU",
            formats=("onnx", "tensorrt"),
            precisions={"onnx": ("fp32",), "tensorrt": ("fp16",)},
            default_precision="fp16",
            default_backend="tensorrt",
            layouts={"onnx": "NCHW", "tensorrt": "NCHW"},
        ),
    )
}


def get_target(name: str) -> Target:
    """The target called `name`; UnknownChoice lists the valid targets and the closest match."""
    return TARGETS[check_choice("target", name, list(TARGETS))]


def list_targets() -> list[Target]:
    return list(TARGETS.values())
