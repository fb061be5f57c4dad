"""Real colour photographs available offline: scikit-learn's two sample images (china.jpg,
flower.jpg, 640×427), and crops and mirror images of them (or of any photos) for when more than
two are needed (the ONNX parity checks of pretrained weights and of imported graphs, tests).
Nothing here needs torch; scikit-learn only for `sample_photo`."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageOps

PHOTO_NAMES = ("china.jpg", "flower.jpg")
# Crop boxes as fractions (left, upper, right, lower) of the photo: whole, then varied views.
CROPS = (
    (0.0, 0.0, 1.0, 1.0),
    (0.1, 0.05, 0.75, 0.95),
    (0.3, 0.0, 1.0, 0.8),
    (0.0, 0.2, 0.6, 1.0),
    (0.2, 0.2, 0.8, 0.8),
    (0.4, 0.3, 0.9, 0.9),
    (0.05, 0.1, 0.55, 0.6),
    (0.5, 0.0, 1.0, 0.5),
)


def sample_photo(name: str) -> Image.Image:
    """One of PHOTO_NAMES as an RGB PIL image."""
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(name))


def photo_views(count: int) -> list[Image.Image]:
    """`count` distinct RGB views of scikit-learn's photos (`views_of`)."""
    return views_of([sample_photo(name) for name in PHOTO_NAMES], count)


def views_of(photos: Sequence[Image.Image], count: int) -> list[Image.Image]:
    """`count` views of `photos`: each photo whole, then its mirror image, then the same for
    each crop box in turn (distinct while `count` is at most 2 x len(CROPS) x len(photos))."""
    views = []
    for i in range(count):
        photo = photos[i % len(photos)]
        box_index, mirrored = divmod(i // len(photos), 2)
        left, upper, right, lower = CROPS[box_index % len(CROPS)]
        w, h = photo.size
        view = photo.crop((round(left * w), round(upper * h), round(right * w), round(lower * h)))
        views.append(ImageOps.mirror(view) if mirrored else view)
    return views
