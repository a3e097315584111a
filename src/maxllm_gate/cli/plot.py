"""``simulate --plot``: throughput and queue depth over time, as a PNG (matplotlib, lazily)."""

from __future__ import annotations

from typing import Any

from maxllm_gate.cli._common import UsageError

__all__ = ["plot", "require_matplotlib"]


def require_matplotlib() -> None:
    """Raises UsageError, with the fix, if matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'maxllm_gate[plot]'") from None


def plot(report: dict[str, Any], path: str) -> None:
    """Save the samples of a simulate report to ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    samples = report["samples"]
    times = [t for t, _, _ in samples]
    # Over a sliding window (5 samples, or 1/60 of the run): single seconds jump 3, 4, 3.
    window = max(5, len(samples) // 60)
    throughput = []
    for i, (t1, d1, _) in enumerate(samples):
        t0, d0, _ = samples[max(0, i - window)]
        throughput.append((d1 - d0) / (t1 - t0) if t1 > t0 else 0.0)
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.5))
    top.plot(times, throughput, color="tab:blue")
    top.set_ylabel("requests done / s")
    top.set_title(
        f"{report['requests']} requests of {report['model']}: "
        f"makespan {report['makespan']:.0f} s, bound {report['bound']:.0f} s"
    )
    bottom.plot(times, [q for _, _, q in samples], color="tab:orange")
    bottom.set_ylabel("waiting requests")
    bottom.set_xlabel("seconds")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
