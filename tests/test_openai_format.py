"""clipfast's own writer of OpenAI-format archives (what the demo uses, without openai/CLIP) against
the same writer driven by openai/CLIP's model class (what the test fixtures use)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import clip.model
import clipfast
import pytest
import torch
from clipfast import _openai_format, _testing
from conftest import fp16_convolution_on_cpu

warnings.filterwarnings("ignore", category=UserWarning, module=r"clip\..*")


# OpenAI's format is a trace run in fp16: torch 2.1 has no fp16 convolution on the CPU (the demo
# then writes a state dict; make compat writes the tests' archives with a newer torch).
pytestmark = pytest.mark.skipif(
    not fp16_convolution_on_cpu(), reason="this torch has no fp16 convolution on the CPU"
)


def _constant(node: Any) -> str:
    """The value of a device or integer constant (dtypes, dims, devices), else ''."""
    if node.kind() != "prim::Constant" or node.outputsSize() != 1:
        return ""
    if node.output().type().kind() not in ("DeviceObjType", "IntType"):
        return ""
    return str(node.output().toIValue())


def _graphs(module: torch.jit.ScriptModule) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(submodule, method) -> the method graph's nodes as (kind, constant value)."""
    out = {}
    for name, sub in module.named_modules():
        for method in sub._c._method_names():
            graph = sub._c._get_method(method).graph
            out[(name, method)] = [(node.kind(), _constant(node)) for node in graph.nodes()]
    return out


@pytest.mark.parametrize("name", ["ViT-B/32", "RN50"])
def test_clipfast_model_writes_the_reference_archive(name: str, tmp_path: Path) -> None:
    s = _testing.tiny(name)
    ours_path = _openai_format.save_archive(_openai_format.random_model(s, 5), s, tmp_path / "a" / "m.pt")
    theirs_path = _openai_format.save_archive(
        _openai_format.random_model(s, 5, clip.model), s, tmp_path / "b" / "m.pt"
    )
    ours, theirs = torch.jit.load(str(ours_path)), torch.jit.load(str(theirs_path))
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert b["visual.conv1.weight"].dtype == torch.float16  # fp16 as OpenAI's files
    assert int(b["input_resolution"]) == s.image_resolution
    # The same traced programs: every method of every submodule, op for op, with the same dtype,
    # dimension and device (cuda:0) constants. Only variable and class names may differ.
    graphs = _graphs(ours)
    assert graphs == _graphs(theirs)
    devices = {
        value for nodes in graphs.values() for kind, value in nodes if value.startswith(("cpu", "cuda"))
    }
    assert devices == {"cuda:0"}


def test_archive_loads_like_the_reference(tmp_path: Path) -> None:
    s = _testing.tiny("ViT-B/16")
    path = _openai_format.save_archive(_openai_format.random_model(s, 1), s, tmp_path / "ViT-B-16.pt")
    import clip

    reference, _ = clip.load(str(path), device="cpu", jit=True)
    model, _ = clipfast.load(str(path), device="cpu")
    image = torch.randn(
        2, 3, s.image_resolution, s.image_resolution, generator=torch.Generator().manual_seed(2)
    )
    text = clipfast.tokenize(["a dog", "a diagram of a cat"])
    with torch.no_grad():
        for ours, theirs in zip(model(image, text), reference(image, text)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
