"""Image sizes at which torchvision's detection transform leaves an image unchanged."""

from __future__ import annotations


def model_input_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(W, H) for which torchvision's detection transform is the identity (its scale is exactly 1).

    The shorter side becomes ``min_size`` unless the longer side would exceed ``max_size``, in
    which case the longer side becomes ``max_size``, as torchvision's own resize rule does.
    """
    short, long = min(width, height), max(width, height)
    if long * min_size / short <= max_size:
        scale, exact = min_size / short, min_size
        new_short, new_long = exact, min(max_size, max(1, round(long * scale)))
    else:
        scale = max_size / long
        new_short, new_long = max(1, round(short * scale)), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)
