"""confusion-exporter: confusion matrices of classifiers in Postgres, as Prometheus metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("confusion-exporter")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
