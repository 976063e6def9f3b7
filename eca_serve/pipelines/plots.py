"""PNG plot of per-layer attention weights (channel index vs weight, one panel per layer: the paper's Fig. 7)."""

from __future__ import annotations

import io
import math
from typing import Sequence

from eca_serve.pipelines.base import LayerWeights


def attention_png(layers: Sequence[LayerWeights], title: str) -> bytes:
    """Render ``layers`` as a grid of line plots and return the PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    cols = min(4, max(1, len(layers)))
    rows = max(1, math.ceil(len(layers) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.2 * rows + 0.6), dpi=80, layout="constrained")
    fig.suptitle(title)
    for i, layer in enumerate(layers):
        ax = fig.add_subplot(rows, cols, i + 1)
        rows_ = layer.weights.reshape(-1, layer.channels)  # one line per radix split / DGC head
        for row in rows_:
            ax.plot(range(layer.channels), row, linewidth=0.8)
        if rows_.max(initial=0.0) <= 1.0:  # DGC saliency is unbounded above
            ax.set_ylim(0, 1)
        ax.set_title(f"{layer.name} (k={layer.k_size})" if layer.k_size else layer.name, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("channel", fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
