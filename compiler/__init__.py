"""infantino.compiler: extractor + head -> ONNX / TFLite / TensorRT artifacts, parity gate, signed bundle.

Entry points: `infantino-compile` (compiler.cli) and compile_bundle(CompileOptions(...)) (compiler.pipeline).
Targets live in compiler.targets, formats in compiler.formats (one module each, registered by name).
"""

from .pipeline import CompileFailed, CompileOptions, CompileResult, compile_bundle, plan

__all__ = ["CompileFailed", "CompileOptions", "CompileResult", "compile_bundle", "plan"]
