"""``import clipfast as clip``: openai/CLIP's README examples run unchanged and print the same numbers.

Each example is run twice in this process, once with ``clip`` bound to the reference package and once
to clipfast, on a generated checkpoint (tiny widths, OpenAI's TorchScript format) and a generated
image; the printed text must be the same apart from the numbers, and every number must agree to the
printed precision.
"""

from __future__ import annotations

import contextlib
import io
import random
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import clipfast
import pytest
import torch
from PIL import Image, ImageDraw

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip as reference_clip

# openai/CLIP README, "Usage", with the model name and image file as variables.
README_USAGE = """
import torch
from PIL import Image

device = "cuda" if torch.cuda.is_available() else "cpu"
model, preprocess = clip.load(MODEL, device=device, jit=JIT)

image = preprocess(Image.open(IMAGE)).unsqueeze(0).to(device)
text = clip.tokenize(["a diagram", "a dog", "a cat"]).to(device)

with torch.no_grad():
    image_features = model.encode_image(image)
    text_features = model.encode_text(text)

    logits_per_image, logits_per_text = model(image, text)
    probs = logits_per_image.softmax(dim=-1).cpu().numpy()

print("Label probs:", probs)
print("image features:", image_features[0, :6].tolist(), image_features.shape, image_features.dtype)
print("text features:", text_features[:, :4].tolist(), text_features.shape)
print("logits:", logits_per_image.tolist(), logits_per_text.tolist())
"""

# openai/CLIP README, "Zero-Shot Prediction", with a generated image instead of CIFAR-100.
README_ZERO_SHOT = """
import torch

device = "cuda" if torch.cuda.is_available() else "cpu"
model, preprocess = clip.load(MODEL, device, jit=JIT)

image, class_id = IMAGE_OBJECT, 3
image_input = preprocess(image).unsqueeze(0).to(device)
text_inputs = torch.cat([clip.tokenize(f"a photo of a {c}") for c in CLASSES]).to(device)

with torch.no_grad():
    image_features = model.encode_image(image_input)
    text_features = model.encode_text(text_inputs)

image_features /= image_features.norm(dim=-1, keepdim=True)
text_features /= text_features.norm(dim=-1, keepdim=True)
similarity = (100.0 * image_features @ text_features.T).softmax(dim=-1)
values, indices = similarity[0].topk(5)

print("\\nTop predictions:\\n")
for value, index in zip(values, indices):
    print(f"{CLASSES[index]:>16s}: {100 * value.item():.2f}%")
print("similarity logits:", (image_features @ text_features.T)[0].tolist())
"""

CLASSES = ["apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle"]
NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:e[-+]?\d+)?")


def _image(path: Path, size: tuple[int, int] = (320, 240)) -> Path:
    img = Image.new("RGB", size)
    pixels = img.load()
    assert pixels is not None
    for y in range(size[1]):
        for x in range(size[0]):
            pixels[x, y] = ((x * 255) // size[0], (y * 255) // size[1], ((x ^ y) * 7) % 256)
    draw = ImageDraw.Draw(img)
    draw.ellipse((60, 40, 200, 180), fill=(200, 30, 40))
    draw.rectangle((210, 100, 300, 220), fill=(20, 160, 60))
    img.save(path)
    return path


def _run(module: Any, source: str, **names: Any) -> str:
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.simplefilter("ignore")
        exec(compile(source, "<readme>", "exec"), {"clip": module, **names})
    return out.getvalue()


def _assert_same_printout(ours: str, reference: str) -> None:
    assert NUMBER.sub("#", ours) == NUMBER.sub("#", reference), (ours, reference)
    for got, want in zip(NUMBER.findall(ours), NUMBER.findall(reference)):
        decimals = len(want.split("e")[0].partition(".")[2])
        # One unit in the last printed place (rounding may flip), plus float32 noise.
        tolerance = 1.01 * 10.0**-decimals if decimals else 0.0
        assert abs(float(got) - float(want)) <= tolerance + 1e-5 * abs(float(want)), (got, want, ours)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", ["ViT-B/32", "RN50"])
def test_readme_usage_prints_the_same(
    name: str, jit: bool, openai_archive: Callable[[str], Path], tmp_path: Path
) -> None:
    names = {"MODEL": str(openai_archive(name)), "IMAGE": str(_image(tmp_path / "CLIP.png")), "JIT": jit}
    reference = _run(reference_clip, README_USAGE, **names)
    ours = _run(clipfast, README_USAGE, **names)
    assert "Label probs:" in ours
    _assert_same_printout(ours, reference)


@pytest.mark.parametrize("jit", [False, True])
def test_readme_zero_shot_prints_the_same(
    jit: bool, openai_archive: Callable[[str], Path], tmp_path: Path
) -> None:
    image = Image.open(_image(tmp_path / "img.png", (500, 375))).convert("RGB")
    names = {"MODEL": str(openai_archive("ViT-B/32")), "IMAGE_OBJECT": image, "CLASSES": CLASSES, "JIT": jit}
    reference = _run(reference_clip, README_ZERO_SHOT, **names)
    ours = _run(clipfast, README_ZERO_SHOT, **names)
    assert "Top predictions" in ours
    _assert_same_printout(ours, reference)


def test_model_attributes_and_preprocess_transforms(
    openai_archive: Callable[[str], Path], tmp_path: Path
) -> None:
    path = str(openai_archive("ViT-B/32"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_model, ref_pre = reference_clip.load(path, device="cpu")
    model, pre = clipfast.load(path, device="cpu")
    assert model.dtype == ref_model.dtype
    assert model.visual.input_resolution == ref_model.visual.input_resolution
    assert model.context_length == ref_model.context_length
    assert model.vocab_size == ref_model.vocab_size
    assert clipfast.available_models() == reference_clip.available_models()

    # Code reads the normalisation constants from the last step ...
    assert tuple(pre.transforms[-1].mean) == tuple(ref_pre.transforms[-1].mean)
    assert tuple(pre.transforms[-1].std) == tuple(ref_pre.transforms[-1].std)
    assert [type(t).__name__ for t in pre.transforms][0:2] == ["Resize", "CenterCrop"]
    # ... or drops the resize and crop for images that are already the right size.
    size = model.visual.input_resolution
    image = Image.open(_image(tmp_path / "square.png", (size, size)))
    pre.transforms = pre.transforms[2:]
    ref_pre.transforms = ref_pre.transforms[2:]
    torch.testing.assert_close(pre(image), ref_pre(image), rtol=0, atol=1e-6)


def test_simple_tokenizer_module_path() -> None:
    from clip.simple_tokenizer import SimpleTokenizer as Reference
    from clipfast.simple_tokenizer import SimpleTokenizer

    ours, ref = SimpleTokenizer(), Reference()
    text = "A photo of a café &amp; its 2 dogs 🐶"
    assert ours.encode(text) == ref.encode(text)
    assert ours.decode(ours.encode(text)) == ref.decode(ref.encode(text))
    assert ours.encoder["<|startoftext|>"] == ref.encoder["<|startoftext|>"] == 49406
    assert ours.decoder[49407] == ref.decoder[49407]


def test_simple_tokenizer_bpe_and_build_model_names() -> None:
    """Names code written for openai/CLIP reaches for: `_tokenizer.bpe(word)`, `get_pairs`,
    `clip.clip.build_model` (found missing by the API probe), with clip's results."""
    from clip import simple_tokenizer as reference_module

    ours, ref = clipfast.simple_tokenizer.SimpleTokenizer(), reference_clip.clip._tokenizer
    words = ["photo", "café", "a", "<|startoftext|>", "xqzjv", "🐶", "antidisestablishment", "2", "'s"]
    for word in words:
        token = "".join(ref.byte_encoder[b] for b in word.encode("utf-8"))
        assert ours.bpe(token) == ref.bpe(token), word
        assert ours.bpe(token) == ref.bpe(token), word  # cached
    # Random words, repeats and rare bytes included: where merges overlap or repeat ("aaaa").
    rng = random.Random(0)
    alphabet = "aaabbeeilnorst\u00e9\u4e2d"
    for _ in range(2000):
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        token = "".join(ref.byte_encoder[b] for b in word.encode("utf-8"))
        assert ours.bpe(token) == ref.bpe(token), word
    word = ("a", "b", "a", "b</w>")
    assert clipfast.simple_tokenizer.get_pairs(word) == reference_module.get_pairs(word)
    assert clipfast.clip.build_model is clipfast.model.build_model
    assert reference_clip.clip.build_model is reference_clip.model.build_model


def test_clip_clip_module_names() -> None:
    """Code that reaches into openai/CLIP's `clip.clip` module finds the same names and results."""
    ours = clipfast.clip
    ref = reference_clip.clip
    assert ours._MODELS == ref._MODELS
    assert ours.available_models() == ref.available_models()
    assert ours.load is clipfast.load and ours.tokenize is clipfast.tokenize
    assert set(ours.__all__) == set(ref.__all__)
    image = Image.new("RGB", (301, 257), (200, 30, 90))
    ImageDraw.Draw(image).ellipse((20, 30, 250, 200), fill=(10, 220, 40))
    for n_px in (224, 336):
        assert torch.equal(ours._transform(n_px)(image), ref._transform(n_px)(image))
    assert ours._convert_image_to_rgb(image.convert("L")).mode == "RGB"
    text = "A photo of a café &amp; its 2 dogs"
    assert ours._tokenizer.encode(text) == ref._tokenizer.encode(text)
    assert clipfast.simple_tokenizer.SimpleTokenizer().encode(text) == ref._tokenizer.encode(text)
    # Documented: Pillow's constant where clip has torchvision's (clipfast does not import
    # torchvision); the same filter wherever either is passed.
    assert ours.BICUBIC == Image.Resampling.BICUBIC and ref.BICUBIC.value == "bicubic"
    resized = [
        transform(image)
        for transform in (
            clipfast.transforms.Resize(224, interpolation=ours.BICUBIC),
            ref.Resize(224, interpolation=ref.BICUBIC),
            ref.Resize(224, interpolation=ours.BICUBIC),
        )
    ]
    assert resized[0].tobytes() == resized[1].tobytes() == resized[2].tobytes()
    with pytest.raises(AttributeError):
        _ = ours.no_such_name
    # Every name of clip.clip but the modules and typing helpers it imports (found missing by the
    # API probe: the torchvision transforms it imports, _Tokenizer, InterpolationMode).
    imported = {"Any", "List", "Union", "hashlib", "os", "urllib", "warnings", "packaging", "torch", "tqdm"}
    missing = {n for n in dir(ref) if not n.startswith("__") and n not in imported and not hasattr(ours, n)}
    assert not missing

    def pipeline(module: Any) -> Any:
        """clip's preprocess rebuilt from the names ``module`` has, as code reaching into it would."""
        return module.Compose(
            [
                module.Resize(224, module.InterpolationMode.BICUBIC),
                module.CenterCrop(224),
                module._convert_image_to_rgb,
                module.ToTensor(),
                module.Normalize((0.5, 0.4, 0.3), (0.2, 0.3, 0.4)),
            ]
        )

    assert torch.equal(pipeline(ours)(image), pipeline(ref)(image))
    assert ours._Tokenizer().encode(text) == ref._Tokenizer().encode(text)


def test_clip_clip_download_behaves_as_clips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """clip.clip._download(url, root): the same file at the same path, and a RuntimeError for bytes
    that do not match the SHA-256 in the URL (clip re-checks; clipfast raises ChecksumError)."""
    import hashlib

    from conftest import local_network
    from http_fault_server import FaultServer, Resource

    local_network(monkeypatch, tmp_path)
    data = b"stand-in weights " * 4096
    sha = hashlib.sha256(data).hexdigest()
    server = FaultServer()
    try:
        url = server.add(f"/clip/models/{sha}/Stand-In.pt", Resource(data=data))
        bad = server.add(f"/clip/models/{'0' * 64}/Bad.pt", Resource(data=data))
        ours = clipfast.clip._download(url, str(tmp_path / "ours"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = reference_clip.clip._download(url, str(tmp_path / "theirs"))
        assert Path(ours).name == Path(theirs).name == "Stand-In.pt"
        assert Path(ours).read_bytes() == Path(theirs).read_bytes() == data
        with pytest.raises(RuntimeError):
            reference_clip.clip._download(bad, str(tmp_path / "theirs"))
        with pytest.raises(RuntimeError):
            clipfast.clip._download(bad, str(tmp_path / "ours"))
        assert not (tmp_path / "ours" / "Bad.pt").exists()
    finally:
        server.stop()


def test_tokenize_through_the_package_name() -> None:
    texts = ["a diagram", "a dog", "a cat"]
    assert torch.equal(clipfast.tokenize(texts).long(), reference_clip.tokenize(texts))
    assert clipfast.tokenize(texts).dtype == torch.int32  # openai/CLIP's dtype on torch >= 1.8


@pytest.mark.parametrize("name", ["ViT-B/32", "RN50"])
def test_build_model_module_path(name: str, openai_archive: Callable[[str], Path]) -> None:
    import clip.model as reference_model
    import clipfast.model

    state_dict = torch.jit.load(str(openai_archive(name)), map_location="cpu").state_dict()
    ours = clipfast.model.build_model(dict(state_dict)).float().eval()
    ref = reference_model.build_model(dict(state_dict)).float().eval()
    assert isinstance(ours, clipfast.model.CLIP)
    resolution = ref.visual.input_resolution
    image = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    text = reference_clip.tokenize(["a diagram", "a dog"])
    with torch.no_grad():
        for got, want in zip(ours(image, text), ref(image, text)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # convert_weights makes the same parameters half as clip's does.
    clipfast.model.convert_weights(ours)
    reference_model.convert_weights(ref)
    assert {k: v.dtype for k, v in ours.state_dict().items()} == {
        k: v.dtype for k, v in ref.state_dict().items()
    }
