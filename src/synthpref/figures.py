"""Saving matplotlib figures the way every run file is saved: atomically, byte-reproducibly."""

from __future__ import annotations

import io
from pathlib import Path

from .rundir import atomic_open


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """Render to memory, then write by atomic rename (a kill never leaves a truncated PNG).
    No 'Software' metadata, so the same figure gives the same bytes across matplotlib builds."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path
