"""Optional dependencies (peers for `bench`, onnxruntime for export): a missing one is a clear
error naming the extra to install, not an ImportError traceback."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"{purpose} needs the {module.split('.')[0]} package: pip install 'vitkit[{extra}]'") from None
