"""open_clip's published OpenAI-structured configurations, by shape: what a bare file's shapes
cannot show (the head counts) where they match one of these.

The table is derived from the ``model_configs`` of open_clip_torch 3.3 by :func:`derive` (the
configurations clipfast builds exactly, see ``formats.open_clip.model_settings``), keyed by every
structural setting except the image resolution and the context length (a fine-tune at another
resolution keeps its heads). ``tests/test_published.py`` checks :data:`TABLE` against the installed
open_clip's configurations. Regenerate with ``python -m clipfast.published``.

Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

__all__ = [
    "REFUSED",
    "TABLE",
    "Published",
    "Refused",
    "derive",
    "derive_refused",
    "match",
    "match_refused",
    "structure_key",
]


class Published(NamedTuple):
    """One structure: the first configuration name that has it, and its head counts."""

    name: str
    vision_heads: int
    transformer_heads: int


def structure_key(settings: Mapping[str, Any]) -> tuple[Any, ...]:
    """The shapes that identify a configuration (``Architecture`` setting names)."""
    layers = settings["vision_layers"]
    return (
        tuple(layers) if isinstance(layers, (list, tuple)) else layers,
        settings["vision_width"],
        settings.get("vision_patch_size"),
        settings.get("vision_mlp_width"),
        settings["embed_dim"],
        settings["vocab_size"],
        settings["transformer_width"],
        settings["transformer_layers"],
        settings["transformer_mlp_width"],
    )


def derive(configs: Mapping[str, Mapping[str, Any]]) -> dict[tuple[Any, ...], Published]:
    """The table for open_clip's ``model_configs`` (name -> ``model_cfg``): the configurations
    clipfast builds, keyed by structure. Raises ValueError where two of them share a structure but
    not their head counts (the shapes could not tell them apart)."""
    from .errors import ArchitectureError
    from .formats.open_clip import model_settings

    table: dict[tuple[Any, ...], Published] = {}
    for name in sorted(configs, key=lambda n: (len(n), n)):
        try:
            decided = model_settings(configs[name], name)
        except ArchitectureError:
            continue
        values = {key: value for key, (value, _) in decided.items()}
        attention = values["vision_width"] * (32 if isinstance(values["vision_layers"], tuple) else 1)
        entry = Published(name, attention // values["vision_head_width"], values["transformer_heads"])
        key = structure_key(values)
        if key in table and table[key][1:] != entry[1:]:
            raise ValueError(f"{table[key].name} and {name} share their shapes but not their heads")
        table.setdefault(key, entry)
    return table


class Refused(NamedTuple):
    """A published configuration whose tensors have OpenAI's names and shapes but that clipfast
    cannot compute exactly (another tokenizer and pooling, layer scale, ...), and why."""

    name: str
    reason: str


def derive_refused(configs: Mapping[str, Mapping[str, Any]]) -> dict[tuple[Any, ...], Refused]:
    """The configurations clipfast refuses whose shapes a bare OpenAI-layout file could have (no
    timm, Hugging Face or CoCa tower), keyed by structure; a structure some buildable configuration
    also has is left out."""
    from .errors import ArchitectureError
    from .formats.open_clip import check_buildable, structure

    accepted = derive(configs)
    refused: dict[tuple[Any, ...], Refused] = {}
    for name in sorted(configs, key=lambda n: (len(n), n)):
        cfg = configs[name]
        vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        if vision.get("timm_model_name") or text.get("hf_model_name") or "multimodal_cfg" in cfg:
            continue
        try:
            check_buildable(cfg, name)
            continue
        except ArchitectureError as err:
            reason = getattr(err, "reason", str(err))
        try:
            values = {key: value for key, (value, _) in structure(cfg, name).items()}
        except ArchitectureError:
            continue
        key = structure_key(values)
        if key not in accepted:
            refused.setdefault(key, Refused(name, reason))
    return refused


def match(settings: Mapping[str, Any]) -> Optional[Published]:
    """The published configuration with these shapes, if any."""
    return TABLE.get(structure_key(settings))


def match_refused(settings: Mapping[str, Any]) -> Optional[Refused]:
    """The published configuration clipfast refuses that has these shapes, if any."""
    return REFUSED.get(structure_key(settings))


# fmt: off
# (vision_layers, vision_width, vision_patch_size, vision_mlp_width, embed_dim, vocab_size,
#  transformer_width, transformer_layers, transformer_mlp_width) -> (name, vision_heads, transformer_heads)
TABLE: dict[tuple[Any, ...], Published] = {
    ((3, 4, 6, 3), 64, None, None, 1024, 49408, 512, 12, 2048): Published('RN50', 32, 8),
    ((3, 4, 23, 3), 64, None, None, 512, 49408, 512, 12, 2048): Published('RN101', 32, 8),
    ((4, 6, 10, 6), 80, None, None, 640, 49408, 640, 12, 2560): Published('RN50x4', 40, 10),
    ((6, 8, 18, 8), 96, None, None, 768, 49408, 768, 12, 3072): Published('RN50x16', 48, 12),
    ((3, 15, 36, 10), 128, None, None, 1024, 49408, 1024, 12, 4096): Published('RN50x64', 64, 16),
    (12, 768, 16, 3072, 512, 49408, 512, 12, 2048): Published('ViT-B-16', 12, 8),
    (12, 768, 32, 3072, 512, 49408, 512, 12, 2048): Published('ViT-B-32', 12, 8),
    (32, 1280, 14, 5120, 1024, 49408, 1024, 24, 4096): Published('ViT-H-14', 16, 16),
    (32, 1280, 16, 5120, 1024, 49408, 1024, 24, 4096): Published('ViT-H-16', 16, 16),
    (24, 1024, 14, 4096, 768, 49408, 768, 12, 3072): Published('ViT-L-14', 16, 12),
    (24, 1024, 16, 4096, 768, 49408, 768, 12, 3072): Published('ViT-L-16', 16, 12),
    (12, 512, 16, 2048, 512, 49408, 512, 12, 2048): Published('ViT-M-16', 8, 8),
    (12, 512, 32, 2048, 512, 49408, 512, 12, 2048): Published('ViT-M-32', 8, 8),
    (12, 384, 16, 1536, 384, 49408, 384, 12, 1536): Published('ViT-S-16', 6, 6),
    (12, 384, 32, 1536, 384, 49408, 384, 12, 1536): Published('ViT-S-32', 6, 6),
    (56, 1792, 14, 15360, 1280, 49408, 1280, 36, 5120): Published('ViT-e-14', 16, 20),
    (40, 1408, 14, 6144, 1024, 49408, 1024, 24, 4096): Published('ViT-g-14', 16, 16),
    (48, 1664, 14, 8192, 1280, 49408, 1280, 32, 5120): Published('ViT-bigG-14', 16, 20),
    (12, 512, 32, 2048, 384, 49408, 384, 12, 1536): Published('ViT-M-32-alt', 8, 6),
    (12, 384, 16, 1536, 256, 49408, 256, 10, 1024): Published('ViT-S-16-alt', 6, 4),
    (12, 384, 32, 1536, 256, 49408, 256, 10, 1024): Published('ViT-S-32-alt', 6, 4),
    (12, 896, 16, 3584, 640, 49408, 640, 12, 2560): Published('ViT-B-16-plus', 14, 10),
    (12, 896, 32, 3584, 640, 49408, 640, 12, 2560): Published('ViT-B-32-plus-256', 14, 10),
}
# The same key -> (name, why clipfast cannot build it)
REFUSED: dict[tuple[Any, ...], Refused] = {
    (12, 512, 16, 2048, 384, 49408, 384, 12, 1536): Refused('ViT-M-16-alt', 'vision_cfg.ls_init_value = 0.0001 (layer scale)'),
    (32, 1280, 14, 5120, 1024, 32000, 1024, 24, 4096): Refused('ViT-H-14-CLIPA', 'vision_cfg.no_ln_pre = true (no LayerNorm before the transformer)'),
    (24, 1024, 14, 4096, 768, 32000, 768, 12, 3072): Refused('ViT-L-14-CLIPA', 'vision_cfg.no_ln_pre = true (no LayerNorm before the transformer)'),
    (48, 1664, 14, 8192, 1280, 32000, 1280, 32, 5120): Refused('ViT-bigG-14-CLIPA', 'vision_cfg.no_ln_pre = true (no LayerNorm before the transformer)'),
    (32, 1280, 14, 5120, 1024, 901629, 1024, 24, 4096): Refused('ViT-H-14-worldwide', 'text_cfg.hf_tokenizer_name = "facebook/xlm-v-base" (another tokenizer than clip\'s)'),
    (24, 1024, 14, 4096, 768, 250100, 768, 12, 3072): Refused('ViT-L-14-worldwide', 'text_cfg.hf_tokenizer_name = "google/mt5-base" (another tokenizer than clip\'s)'),
    (48, 1664, 14, 8192, 1280, 901629, 1280, 32, 5120): Refused('ViT-bigG-14-worldwide', 'text_cfg.hf_tokenizer_name = "facebook/xlm-v-base" (another tokenizer than clip\'s)'),
}
# fmt: on


def _render(table: Mapping[tuple[Any, ...], tuple[Any, ...]]) -> str:
    lines = [f"    {key!r}: {type(entry).__name__}{tuple(entry)!r}," for key, entry in table.items()]
    return "\n".join(lines)


if __name__ == "__main__":  # print the table for the installed open_clip
    import json
    import pathlib

    import open_clip

    folder = pathlib.Path(open_clip.__file__).parent / "model_configs"
    configs = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    print("TABLE:")
    print(_render(derive(configs)))
    print("REFUSED:")
    print(_render(derive_refused(configs)))
