"""The typed contracts that parts, stores and pipelines pass to each other.

- ``Features``: what an extractor gives for one image (local features, a global descriptor, or both).
- ``Matches``: what a matcher gives for one pair of images.
- ``InputSpec``: what an extractor or matcher takes as input (an image of C channels, or events).

Conventions, everywhere in visloc:

- keypoints are ``(x, y)`` pixels of the *original* image, with the centre of the top-left pixel at
  ``(0, 0)`` (OpenCV, hloc and kornia's convention);
- local descriptors are ``[N, D]`` and L2-normalised; global descriptors are ``[G]`` and L2-normalised,
  compared by inner product;
- ``image_size`` is ``(W, H)`` of the original image;
- match indices are ``int64`` in memory (``int32`` on disk, never hloc's overflowing int16).

Both types hold torch tensors (CPU unless moved with ``to``); ``from_numpy`` / ``numpy`` convert.
Checks raise ``ValueError`` naming the field and the shape it expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _tensor(value: ArrayLike, dtype: torch.dtype) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    return t.to(dtype)


@dataclass(frozen=True)
class InputSpec:
    """What a part takes as input.

    Attributes:
        kind: ``image`` (a float32 ``[B, C, H, W]`` in ``[0, 1]``) or ``events`` (a representation
            of an event window, ``[B, C, H, W]`` with ``C`` its channels).
        channels: ``C``: 1 (gray) or 3 (RGB) for images; the representation's channels for events.
        divisible_by: ``H`` and ``W`` the network needs to be multiples of (the part pads itself; this
            says what it pads to).
        representation: for events, the registered representation (``REPRESENTATIONS``).
        bins: for events, the temporal bins of the representation.
    """

    kind: Literal["image", "events"] = "image"
    channels: int = 3
    divisible_by: int = 1
    representation: str | None = None
    bins: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "image" and self.channels not in (1, 3):
            raise ValueError(f"InputSpec.channels: an image has 1 or 3 channels, got {self.channels}")
        if self.channels < 1 or self.divisible_by < 1:
            raise ValueError(f"InputSpec: channels and divisible_by must be >= 1, got {self.channels}, "
                             f"{self.divisible_by}")
        if self.kind == "events" and self.representation is None:
            raise ValueError("InputSpec: an events input names its representation")


IMAGE_RGB = InputSpec("image", 3)
IMAGE_GRAY = InputSpec("image", 1)


@dataclass(frozen=True)
class Features:
    """Features of one image.

    Attributes:
        keypoints: ``[N, 2]`` float32 ``(x, y)`` in original pixels (pixel-centre-at-0).
        descriptors: ``[N, D]`` float32, L2-normalised; ``[0, 0]`` when the part gives no local features.
        scores: ``[N]`` float32 detection scores.
        image_size: ``(W, H)`` of the original image.
        global_descriptor: ``[G]`` float32, L2-normalised, or None.
        extras: other per-keypoint (``[N, ...]``) or per-image arrays a part gives (e.g. ``scales``),
            stored under their names.
    """

    keypoints: torch.Tensor
    descriptors: torch.Tensor
    scores: torch.Tensor
    image_size: tuple[int, int]
    global_descriptor: torch.Tensor | None = None
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kp, desc, sc = self.keypoints, self.descriptors, self.scores
        if kp.ndim != 2 or kp.shape[1] != 2:
            raise ValueError(f"Features.keypoints: expected [N, 2], got {tuple(kp.shape)}")
        n = kp.shape[0]
        if desc.ndim != 2 or (desc.shape[0] != n and not (n == 0 and desc.shape[0] == 0)):
            raise ValueError(f"Features.descriptors: expected [N={n}, D], got {tuple(desc.shape)}")
        if sc.shape != (n,):
            raise ValueError(f"Features.scores: expected [N={n}], got {tuple(sc.shape)}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"Features.image_size: expected (W, H) >= 1, got {self.image_size}")
        g = self.global_descriptor
        if g is not None and g.ndim != 1:
            raise ValueError(f"Features.global_descriptor: expected [G], got {tuple(g.shape)}")

    @classmethod
    def global_only(cls, global_descriptor: ArrayLike, image_size: tuple[int, int]) -> Features:
        """Features of a part that gives only a global descriptor."""
        return cls(torch.zeros(0, 2), torch.zeros(0, 0), torch.zeros(0), image_size,
                   _tensor(global_descriptor, torch.float32))

    @property
    def has_local(self) -> bool:
        """Whether local features are present (possibly zero keypoints of a local extractor)."""
        return self.descriptors.shape[1] > 0

    @property
    def num_keypoints(self) -> int:
        """``N``."""
        return int(self.keypoints.shape[0])

    @property
    def descriptor_dim(self) -> int:
        """``D`` (0 without local features)."""
        return int(self.descriptors.shape[1])

    def to(self, device: torch.device | str) -> Features:
        """The same features on ``device``."""
        g = self.global_descriptor
        return replace(self, keypoints=self.keypoints.to(device), descriptors=self.descriptors.to(device),
                       scores=self.scores.to(device), global_descriptor=None if g is None else g.to(device),
                       extras={k: v.to(device) for k, v in self.extras.items()})

    def with_global(self, global_descriptor: ArrayLike) -> Features:
        """These features with ``global_descriptor`` set."""
        return replace(self, global_descriptor=_tensor(global_descriptor, torch.float32))

    @classmethod
    def from_numpy(cls, arrays: Mapping[str, np.ndarray]) -> Features:
        """From in-memory arrays keyed as the store's datasets (``descriptors [N, D]``)."""
        size = arrays.get("image_size")
        if size is None:
            raise ValueError("Features: 'image_size' is missing")
        w, h = (int(v) for v in np.asarray(size).reshape(-1)[:2])
        g = arrays.get("global_descriptor")
        known = {"keypoints", "descriptors", "scores", "image_size", "global_descriptor"}
        extras = {k: _tensor(v, torch.from_numpy(np.asarray(v)).dtype) for k, v in arrays.items() if k not in known}
        if "keypoints" not in arrays:
            if g is None:
                raise ValueError("Features: neither local features nor a global descriptor")
            return replace(cls.global_only(g, (w, h)), extras=extras)
        kp = _tensor(arrays["keypoints"], torch.float32)
        desc = arrays.get("descriptors")
        scores = arrays.get("scores")
        return cls(kp, _tensor(desc, torch.float32) if desc is not None else torch.zeros(len(kp), 0),
                   _tensor(scores, torch.float32) if scores is not None else torch.ones(len(kp)), (w, h),
                   None if g is None else _tensor(g, torch.float32), extras)

    def numpy(self) -> dict[str, np.ndarray]:
        """Arrays keyed as the store's datasets (``descriptors [N, D]``, float32, ``image_size`` int64)."""
        out: dict[str, np.ndarray] = {"image_size": np.asarray(self.image_size, np.int64)}
        if self.has_local or self.global_descriptor is None:
            out["keypoints"] = self.keypoints.detach().cpu().numpy().astype(np.float32)
            out["descriptors"] = self.descriptors.detach().cpu().numpy().astype(np.float32)
            out["scores"] = self.scores.detach().cpu().numpy().astype(np.float32)
        if self.global_descriptor is not None:
            out["global_descriptor"] = self.global_descriptor.detach().cpu().numpy().astype(np.float32)
        for k, v in self.extras.items():
            out[k] = v.detach().cpu().numpy()
        return out


@dataclass(frozen=True)
class Matches:
    """Matches of one image pair.

    Attributes:
        matches: ``[M, 2]`` int64, ``(index in keypoints of image 0, index in keypoints of image 1)``.
        scores: ``[M]`` float32 confidences in ``[0, 1]``.
        num0: the number of keypoints of image 0 (the length of ``matches0``).
        num1: the number of keypoints of image 1.
        keypoints0: for image matchers, the ``[N0, 2]`` keypoints of image 0 that ``matches`` indexes
            (original pixels, pixel-centre-at-0); None for feature matchers, whose indices refer to
            the features they were given.
        keypoints1: likewise for image 1.
    """

    matches: torch.Tensor
    scores: torch.Tensor
    num0: int
    num1: int
    keypoints0: torch.Tensor | None = None
    keypoints1: torch.Tensor | None = None

    def __post_init__(self) -> None:
        m = self.matches
        if m.ndim != 2 or m.shape[1] != 2:
            raise ValueError(f"Matches.matches: expected [M, 2], got {tuple(m.shape)}")
        if self.scores.shape != (m.shape[0],):
            raise ValueError(f"Matches.scores: expected [M={m.shape[0]}], got {tuple(self.scores.shape)}")
        if len(m) and (int(m[:, 0].min()) < 0 or int(m[:, 0].max()) >= self.num0
                       or int(m[:, 1].min()) < 0 or int(m[:, 1].max()) >= self.num1):
            raise ValueError(f"Matches.matches: indices outside [0, {self.num0}) x [0, {self.num1})")
        for which, kp, n in (("keypoints0", self.keypoints0, self.num0), ("keypoints1", self.keypoints1, self.num1)):
            if kp is not None and (kp.ndim != 2 or kp.shape != (n, 2)):
                raise ValueError(f"Matches.{which}: expected [{n}, 2], got {tuple(kp.shape)}")

    @classmethod
    def from_matches0(cls, matches0: torch.Tensor, scores0: torch.Tensor, num1: int) -> Matches:
        """From hloc's ``matches0 [N0]`` (index in image 1 or -1) and ``matching_scores0 [N0]``."""
        m0 = matches0.long()
        idx0 = torch.nonzero(m0 >= 0, as_tuple=False)[:, 0]
        return cls(torch.stack([idx0, m0[idx0]], -1), scores0[idx0].float(), int(m0.shape[0]), num1)

    @classmethod
    def empty(cls, num0: int, num1: int, device: torch.device | str = "cpu") -> Matches:
        """No matches."""
        return cls(torch.zeros(0, 2, dtype=torch.long, device=device), torch.zeros(0, device=device), num0, num1)

    @property
    def num_matches(self) -> int:
        """``M``."""
        return int(self.matches.shape[0])

    @property
    def dense(self) -> bool:
        """Whether the matcher gave its own keypoints (an image matcher)."""
        return self.keypoints0 is not None

    def matches0(self) -> torch.Tensor:
        """Hloc's ``matches0 [N0]``: the index in image 1 of each keypoint of image 0, or -1."""
        out = torch.full((self.num0,), -1, dtype=torch.long, device=self.matches.device)
        out[self.matches[:, 0]] = self.matches[:, 1]
        return out

    def matching_scores0(self) -> torch.Tensor:
        """Hloc's ``matching_scores0 [N0]`` (0 where unmatched)."""
        out = torch.zeros(self.num0, dtype=torch.float32, device=self.scores.device)
        out[self.matches[:, 0]] = self.scores.float()
        return out

    def to(self, device: torch.device | str) -> Matches:
        """The same matches on ``device``."""
        k0, k1 = self.keypoints0, self.keypoints1
        return replace(self, matches=self.matches.to(device), scores=self.scores.to(device),
                       keypoints0=None if k0 is None else k0.to(device),
                       keypoints1=None if k1 is None else k1.to(device))

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(matches [M, 2] int64, scores [M] float32)`` as numpy arrays."""
        return (self.matches.detach().cpu().numpy().astype(np.int64),
                self.scores.detach().cpu().numpy().astype(np.float32))
