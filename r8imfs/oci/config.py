"""Image configs, history paired with layers, and the weights-layer rules.

History entries describe build steps; only those without ``empty_layer``
produced a layer (image-spec config.md). Tools that append layers sometimes
write no history entry at all, so pairing is positional over the non-empty
entries and missing entries pair with ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from r8imfs.oci.manifest import Descriptor, Manifest, load_json

NOP_PREFIX = "/bin/sh -c #(nop) "
WEIGHTS_SUFFIX = " # weights"
COPY_SRC_PREFIX = "COPY . /src"
WEIGHTS_DIR = "src/weights/"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    created_by: str | None = None
    comment: str | None = None
    created: str | None = None
    empty_layer: bool = False

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> HistoryEntry:
        return cls(
            created_by=obj.get("created_by"),
            comment=obj.get("comment"),
            created=obj.get("created"),
            empty_layer=bool(obj.get("empty_layer", False)),
        )

    @property
    def command(self) -> str:
        """``created_by`` with Docker's ``/bin/sh -c #(nop) `` noise trimmed."""
        text = self.created_by or ""
        return text[len(NOP_PREFIX) :] if text.startswith(NOP_PREFIX) else text


@dataclass(frozen=True, slots=True)
class Layer:
    index: int
    descriptor: Descriptor
    diff_id: str | None
    history: HistoryEntry | None

    @property
    def created_by(self) -> str:
        return self.history.command if self.history else ""

    @property
    def comment(self) -> str:
        return (self.history.comment or "") if self.history else ""

    @property
    def is_weights(self) -> bool:
        """Marked as weights by r8im's convention: ``… # weights`` or comment ``weights``."""
        return self.created_by.endswith(WEIGHTS_SUFFIX) or self.comment == "weights"

    @property
    def is_copy_src(self) -> bool:
        return self.created_by.startswith(COPY_SRC_PREFIX)


@dataclass(frozen=True, slots=True)
class ImageConfig:
    raw: bytes
    data: dict[str, Any]

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        return cls(raw, load_json(raw, "image config"))

    @property
    def diff_ids(self) -> list[str]:
        return list((self.data.get("rootfs") or {}).get("diff_ids") or [])

    @property
    def history(self) -> list[HistoryEntry]:
        return [HistoryEntry.from_json(h) for h in self.data.get("history") or []]


def pair_layers(manifest: Manifest, config: ImageConfig) -> list[Layer]:
    """Each manifest layer with its diff_id and the history entry that made it."""
    producing = [h for h in config.history if not h.empty_layer]
    diff_ids = config.diff_ids
    out = []
    for i, desc in enumerate(manifest.layers):
        out.append(
            Layer(
                index=i,
                descriptor=desc,
                diff_id=diff_ids[i] if i < len(diff_ids) else None,
                history=producing[i] if i < len(producing) else None,
            )
        )
    return out


def weights_candidates(layers: list[Layer]) -> tuple[list[Layer], list[Layer]]:
    """The layers ``extract`` searches: first choice (``# weights``), then fallback."""
    return [x for x in layers if x.is_weights], [x for x in layers if x.is_copy_src]
