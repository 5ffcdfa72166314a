"""A monitor's configuration as the statistics' parameters.

The statistics (stats/) take plain parameter objects and know nothing of the config file;
the config (config.py) knows nothing of the statistics. This is where one becomes the other.
"""

from __future__ import annotations

from .config import MonitorConfig, SequentialConfig
from .stats.sequential import SequentialParameters
from .stats.shift import ShiftParameters


def shift_parameters(monitor: MonitorConfig) -> ShiftParameters:
    """The window tests' parameters of ``monitor``."""
    return ShiftParameters(
        alpha=monitor.alpha,
        min_effect=monitor.min_effect,
        min_samples=monitor.min_samples,
        min_row_samples=monitor.min_row_samples,
        monte_carlo_samples=monitor.monte_carlo_samples,
        top_cells=monitor.top_cells,
    )


def sequential_parameters(settings: SequentialConfig, segments: int = 1) -> SequentialParameters:
    """The sequential layer's parameters, its threshold counting ``segments`` slices."""
    return SequentialParameters(
        min_relative_change=settings.min_relative_change,
        min_absolute_change=settings.min_absolute_change,
        false_alarms_per_30_days=settings.false_alarms_per_30_days,
        accept_after_hours=None
        if settings.accept_after is None
        else settings.accept_after.total_seconds() / 3600,
        false_discovery_rates=settings.false_discovery_rates,
        segments=segments,
    )
