"""autoopt: an automated optimization search for PyTorch models.

    import autoopt
    result = autoopt.search("pipelines/digits_cnn.py", target_latency="100ms")
    print(result.best.config, result.best.metrics)
"""

from .version import __version__
from .cache import cache_dir, cached_state_dict
from .errors import AutoOptError, ConfigError, ExportError, PipelineError, Unsupported
from .pipeline import Pipeline, bundled_pipelines, load_pipeline


def __getattr__(name):
    # search() pulls in torch, optuna and MLflow: import it on first use so `autoopt --help` stays fast.
    if name in ("search", "SearchResult", "export", "trials", "plan"):
        from . import api

        return getattr(api, name)
    if name == "SearchOptions":
        from .options import SearchOptions

        return SearchOptions
    if name == "load":
        from .bundle.loader import load

        return load
    if name == "knobs":
        import importlib

        return importlib.import_module(".knobs", __name__)
    raise AttributeError(f"module 'autoopt' has no attribute {name!r}")


__all__ = [
    "Pipeline", "search", "plan", "SearchResult", "SearchOptions", "export", "trials", "load", "load_pipeline",
    "bundled_pipelines", "cache_dir", "cached_state_dict",
    "AutoOptError", "ConfigError", "ExportError", "PipelineError", "Unsupported", "__version__",
]
