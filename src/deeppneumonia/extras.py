"""Optional extras: which ``pip install 'deeppneumonia[EXTRA]'`` provides which import, and a one-line hint.

The core toolkit (train, evaluate without figures, predict PNG/JPEG) needs only the base dependencies. Each
extra adds a feature; when it is missing, the feature raises :class:`MissingExtraError` (a
:class:`~deeppneumonia.errors.DeepPneumoniaError`), which the command line prints as one line and exits 2.
"""

from __future__ import annotations

import importlib

from deeppneumonia.errors import DeepPneumoniaError

# top-level import name -> the extra that installs it (pyproject.toml [project.optional-dependencies])
MODULE_EXTRAS: dict[str, str] = {
    "pydicom": "dicom", "pylibjpeg": "dicom", "openjpeg": "dicom", "libjpeg": "dicom", "gdcm": "dicom",
    "pytorch_grad_cam": "explain", "matplotlib": "explain",
    "onnx": "export", "onnxscript": "export", "onnxruntime": "export",
    "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
    "skimage": "experiments",
}
# what each extra is for, as the hint says it
PURPOSE: dict[str, str] = {"dicom": "reading DICOM files", "explain": "Grad-CAM heatmaps and figures",
                           "export": "ONNX export", "serve": "the web service", "experiments": "the classical baselines"}


class MissingExtraError(DeepPneumoniaError):
    """A feature needs an optional extra that is not installed. ``str(exc)`` is the one-line install hint.

    Attributes:
        extra: the extra's name (``dicom``, ``explain``, ``export``, ``serve``, ``experiments``).
        module: the import that failed.
    """

    def __init__(self, extra: str, module: str) -> None:
        """Build the one-line install hint for ``extra`` (``module`` is the import that failed)."""
        self.extra, self.module = extra, module
        what = PURPOSE.get(extra, "this feature")
        super().__init__(f"{what} needs the {extra} extra ({module} is not installed): "
                         f"pip install 'deeppneumonia[{extra}]'")


def extra_for(module: str | None) -> str | None:
    """The extra that provides ``module`` (a dotted import name is judged by its top level), or None."""
    if not module:
        return None
    return MODULE_EXTRAS.get(module.split(".")[0])


def has(*modules: str) -> bool:
    """Whether every one of ``modules`` imports (a module set to None in ``sys.modules`` counts as missing)."""
    try:
        require(*modules)
    except MissingExtraError:
        return False
    return True


def require(*modules: str) -> None:
    """Import ``modules`` or raise :class:`MissingExtraError` naming the extra that provides the first missing one.

    Raises:
        MissingExtraError: a module is not installed.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise MissingExtraError(extra_for(name) or "all", name) from exc


def as_missing_extra(exc: ImportError) -> MissingExtraError | None:
    """Turn an ImportError of an optional dependency into its hint; None for any other ImportError."""
    extra = extra_for(exc.name)
    return MissingExtraError(extra, exc.name or "?") if extra else None


__all__ = ["MODULE_EXTRAS", "MissingExtraError", "as_missing_extra", "extra_for", "has", "require"]
