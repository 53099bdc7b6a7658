"""jit=True: OpenAI-style TorchScript archives (cuda:0 constants, fp16 casts) patched for the CPU.

Each of the nine architectures, tiny widths, real TorchScript archives from ``_testing``: the patched
graphs hold no cuda constant and no cast to half, the model runs on the CPU, and its outputs agree
with the non-jit model (clip's own tolerance, atol 0.01 on probabilities) and with
``clip.load(path, device="cpu", jit=True)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from clipfast import _testing
from clipfast.jit import cuda_constants, device_constants, graphs, load_jit
from conftest import fp16_convolution_on_cpu

CAPTIONS = ["a diagram", "a dog", "a cat", "a photo of a red car"]


def _inputs(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    import clip

    gen = torch.Generator().manual_seed(7)
    image = torch.randn(2, 3, resolution, resolution, generator=gen)
    return image, clip.tokenize(CAPTIONS)


def _run(model: Any, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
    # Without the profiling executor's optimisation runs: the same graphs, run once, much faster.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        logits_per_image, logits_per_text = model(image, text)
        return {
            "image_features": model.encode_image(image).float(),
            "text_features": model.encode_text(text).float(),
            "logits_per_image": logits_per_image.float(),
            "logits_per_text": logits_per_text.float(),
            "probs": logits_per_image.float().softmax(dim=-1),
        }


def _half_casts(model: torch.jit.ScriptModule) -> int:
    count = 0
    for graph in graphs(model):
        for node in graph.findAllNodes("aten::to"):
            for value in list(node.inputs())[1:3]:
                if (
                    value.node().kind() == "prim::Constant"
                    and value.type().kind() == "IntType"
                    and value.node().output().toIValue() == 5
                ):
                    count += 1
    return count


@pytest.mark.parametrize("name", list(_testing.FULL))
def test_patched_archive_matches_clip_and_non_jit(name: str, openai_archive: Callable[[str], Path]) -> None:
    import clip

    path = openai_archive(name)
    raw = torch.jit.load(str(path), map_location="cpu")
    assert cuda_constants(raw), "the fixture should carry cuda constants, as OpenAI's files do"
    assert set(device_constants(raw)) == {"cuda:0"}, "traced on a GPU: no device constant names the cpu"
    assert _half_casts(raw) > 0

    model = load_jit(path, "cpu")
    assert isinstance(model, torch.jit.ScriptModule)
    assert cuda_constants(model) == []
    assert _half_casts(model) == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not model.training

    resolution = int(model.input_resolution.item())
    image, text = _inputs(resolution)
    ours = _run(model, image, text)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference_jit, _ = clip.load(str(path), device="cpu", jit=True)
        reference_eager, _ = clip.load(str(path), device="cpu", jit=False)
    same_code = _run(reference_jit, image, text)
    eager = _run(reference_eager, image, text)

    for key, value in ours.items():
        # The same graphs on the same weights: equal up to float rounding.
        torch.testing.assert_close(value, same_code[key], rtol=1e-4, atol=1e-4, msg=f"{name} {key}")
    torch.testing.assert_close(ours["probs"], eager["probs"], rtol=0, atol=0.01)
    torch.testing.assert_close(ours["logits_per_image"], eager["logits_per_image"], rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("device", ["cpu", "cpu:0", torch.device("cpu"), torch.device("cpu", 0)])
def test_every_cpu_spelling_gets_float(device: Any, openai_archive: Callable[[str], Path]) -> None:
    model = load_jit(openai_archive("ViT-B/32"), device)
    assert cuda_constants(model) == []
    assert _half_casts(model) == 0
    image, _text = _inputs(int(model.input_resolution.item()))
    with torch.no_grad():
        features = model.encode_image(image)
    assert features.dtype == torch.float32


def test_unpatched_archive_does_not_run_on_cpu(openai_archive: Callable[[str], Path]) -> None:
    # Why the patching exists: the raw graphs ask for cuda:0 (no GPU here) or half on the CPU.
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    raw = torch.jit.load(str(openai_archive("ViT-B/32")), map_location="cpu").float()
    _image, text = _inputs(int(raw.input_resolution.item()))
    with pytest.raises(RuntimeError), torch.no_grad():
        raw.encode_text(text)


def test_dtype_patch_leaves_other_uses_of_five_alone() -> None:
    class Cast(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.to(torch.float16).sum() + x.new_full((5,), 5.0).sum() + x.size(0) * 5

    scripted = torch.jit.script(Cast())
    from clipfast.jit import patch_half_to_float

    assert patch_half_to_float(scripted) == 1
    x = torch.ones(3)
    assert scripted(x).dtype == torch.float32
    assert scripted(x).item() == pytest.approx(3 + 25 + 15)


def test_not_an_archive_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-model.pt"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises((RuntimeError, ValueError)):
        load_jit(bad, "cpu")


def test_cuda_constants_follow_another_gpu(openai_archive: Callable[[str], Path]) -> None:
    # Graph level only (no GPU needed): cuda:0 becomes the requested device, nothing else changes.
    from clipfast.jit import patch_device

    raw = torch.jit.load(str(openai_archive("RN50")), map_location="cpu")
    before = len(cuda_constants(raw))
    assert patch_device(raw, torch.device("cuda", 1)) == before
    assert cuda_constants(raw) == ["cuda:1"] * before
    assert _half_casts(raw) > 0  # half stays half off the CPU


def _graph_tensor_devices(model: torch.jit.ScriptModule) -> set[str]:
    """Devices of the tensors traced into the graphs as constants (the text attention mask)."""
    return {
        str(node.output().toIValue().device)
        for graph in graphs(model)
        for node in graph.findAllNodes("prim::Constant")
        if node.output().type().kind() == "TensorType"
    }


def test_traced_tensor_constants_exist(openai_archive: Callable[[str], Path]) -> None:
    # Why load_jit maps the archive to the device: .to() moves parameters and buffers, not these.
    assert _graph_tensor_devices(load_jit(openai_archive("ViT-B/32"), "cpu")) == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["RN50", "ViT-B/32"])
def test_jit_on_cuda_matches_the_eager_fp16_model(name: str, openai_archive: Callable[[str], Path]) -> None:
    import clipfast

    path = openai_archive(name)
    model = load_jit(path, "cuda")
    assert set(cuda_constants(model)) == {"cuda"}
    assert _graph_tensor_devices(model) == {"cuda:0"}
    assert {str(t.device) for t in model.state_dict().values()} == {"cuda:0"}
    assert model.visual.conv1.weight.dtype == torch.float16  # OpenAI's fp16 layout, as clip's jit gives

    eager, _ = clipfast.load(path, device="cuda")
    image, text = _inputs(int(model.input_resolution.item()))
    ours = _run(model, image.cuda(), text.cuda())
    reference = _run(eager, image.cuda(), text.cuda())
    for key, value in ours.items():  # the same fp16 arithmetic, traced vs eager
        torch.testing.assert_close(value, reference[key], rtol=1e-2, atol=1e-2, msg=f"{name} {key}")


def _state_dtypes(module: torch.nn.Module) -> dict[str, torch.dtype]:
    return {key: tensor.dtype for key, tensor in module.state_dict().items()}


@pytest.mark.skipif(not fp16_convolution_on_cpu(), reason="this torch has no fp16 convolution on the CPU")
@pytest.mark.parametrize("name", ["RN50", "ViT-B/32"])
def test_jit_float16_on_the_cpu_is_the_archive_as_traced(
    name: str, openai_archive: Callable[[str], Path]
) -> None:
    # dtype was ignored with jit=True (float32 came back). float16 keeps the traced half casts and
    # OpenAI's fp16 layout, as clip.load(jit=True) gives for a CPU device other than the string "cpu".
    import clip
    import clipfast

    path = openai_archive(name)
    model, _ = clipfast.load(path, device="cpu", jit=True, dtype=torch.float16)
    assert cuda_constants(model) == [] and _half_casts(model) > 0
    eager, _ = clipfast.load(path, device="cpu", dtype=torch.float16)
    layout = _state_dtypes(eager)  # the same half layout as the eager model's (the archive adds int buffers)
    assert {key: dtype for key, dtype in _state_dtypes(model).items() if key in layout} == layout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, _ = clip.load(str(path), device="cpu:0", jit=True)
    assert _state_dtypes(model) == _state_dtypes(reference)

    image, text = _inputs(int(model.input_resolution.item()))
    ours = _run(model, image, text)
    same_code = _run(reference, image, text)
    half_eager = _run(eager, image.half(), text)
    for key, value in ours.items():
        torch.testing.assert_close(value, same_code[key], rtol=0, atol=0, msg=f"{name} {key}")
        torch.testing.assert_close(value, half_eager[key], rtol=1e-2, atol=1e-2, msg=f"{name} {key}")


def test_jit_float32_is_the_patched_archive(openai_archive: Callable[[str], Path]) -> None:
    import clipfast

    path = openai_archive("ViT-B/32")
    model, _ = clipfast.load(path, device="cpu", jit=True, dtype=torch.float32)
    assert _half_casts(model) == 0
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64, lambda name, stored: torch.float16])
def test_jit_refuses_a_dtype_its_graphs_cannot_run(dtype: Any, openai_archive: Callable[[str], Path]) -> None:
    import clipfast

    path = openai_archive("ViT-B/32")
    with pytest.raises(clipfast.UnsupportedDtypeError, match=r"jit=True cannot give .*jit=False") as raised:
        clipfast.load(path, device="cpu", jit=True, dtype=dtype)
    assert isinstance(raised.value, ValueError) and str(path) in str(raised.value)
    model, _ = clipfast.load(path, device="cpu", jit=False, dtype=dtype)  # the eager model honours it
    assert model.visual.conv1.weight.dtype == (dtype if isinstance(dtype, torch.dtype) else torch.float16)


def test_jit_refuses_the_dtype_before_downloading(monkeypatch: pytest.MonkeyPatch) -> None:
    import clipfast
    import clipfast.download

    def no_download(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("downloaded")

    monkeypatch.setattr(clipfast.download, "resolve_model", no_download)
    with pytest.raises(clipfast.UnsupportedDtypeError, match="ViT-B/32"):
        clipfast.load("ViT-B/32", device="cpu", jit=True, dtype=torch.bfloat16)


def test_jit_float16_refuses_an_archive_traced_in_float32(tmp_path: Path) -> None:
    import clipfast

    class Plain(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    path = tmp_path / "float32.pt"
    torch.jit.script(Plain()).save(str(path))
    with pytest.raises(clipfast.UnsupportedDtypeError, match="without casts to float16"):
        load_jit(path, "cpu", dtype=torch.float16)
    assert load_jit(path, "cpu", dtype=torch.float32)(torch.ones(2)).tolist() == [2.0, 2.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_jit_float32_on_cuda_matches_the_eager_float32_model(openai_archive: Callable[[str], Path]) -> None:
    import clipfast

    path = openai_archive("ViT-B/32")
    model, _ = clipfast.load(path, device="cuda", jit=True, dtype=torch.float32)
    assert cuda_constants(model) == ["cuda"] * len(cuda_constants(model)) and _half_casts(model) == 0
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    eager, _ = clipfast.load(path, device="cuda", dtype=torch.float32)
    image, text = _inputs(int(model.input_resolution.item()))
    ours = _run(model, image.cuda(), text.cuda())
    reference = _run(eager, image.cuda(), text.cuda())
    for key, value in ours.items():
        torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-4, msg=key)
