"""clipfast.load against openai/CLIP's clip.load on the same files: state, outputs, preprocess, errors."""

from __future__ import annotations

import os
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import clipfast
import numpy as np
import pytest
import torch
from clipfast import _testing
from clipfast.errors import ArchitectureError, CheckpointError, ModelNotFoundError, UnsafeCheckpointError
from PIL import Image

ALL_MODELS = list(_testing.FULL)
Loaded = tuple[Any, Any, Any, Any]  # (clipfast model, clipfast preprocess, clip model, clip preprocess)


def clip_load(path: Path, device: Any = "cpu", jit: bool = False) -> tuple[Any, Any]:
    import clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clip.load(str(path), device=device, jit=jit)


def assert_same_state(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(reference)
    for key, expected in reference.items():
        got = ours[key]
        assert got.dtype == expected.dtype, key
        assert got.shape == expected.shape, key
        assert got.stride() == expected.stride(), key
        assert got.device == expected.device, key
        assert torch.equal(got, expected), key


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """torch's OpenMP threads spin while they wait: on a busy 2-core machine two threads make these
    small forward passes ten times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded(
    openai_archive: Callable[[str], Path], state_dict_file: Callable[[str], Path]
) -> Callable[[str, str], Loaded]:
    """(model name, "archive" | "state_dict") -> both libraries' CPU loads of the same file, made once."""
    cache: dict[tuple[str, str], Loaded] = {}

    def get(name: str, kind: str) -> Loaded:
        if (name, kind) not in cache:
            path = openai_archive(name) if kind == "archive" else state_dict_file(name)
            model, preprocess = clipfast.load(path, device="cpu")
            reference, reference_preprocess = clip_load(path)
            cache[name, kind] = (model, preprocess, reference, reference_preprocess)
        return cache[name, kind]

    return get


def inputs(model: Any, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    n_px = model.visual.input_resolution
    gen = torch.Generator().manual_seed(7)
    image = torch.randn(batch, 3, n_px, n_px, generator=gen)
    text = torch.randint(1, model.vocab_size - 2, (batch, model.context_length), generator=gen)
    text[0, 5] = model.vocab_size - 1  # end-of-text positions differ between the rows
    if batch > 1:
        text[1, -1] = model.vocab_size - 1
        text[1, 9:20] = 0
    return image, text


@pytest.mark.parametrize("name", ALL_MODELS)
def test_archive_state_dict_equals_clip_load(name: str, loaded: Callable[[str, str], Loaded]) -> None:
    model, _, reference, _ = loaded(name, "archive")
    assert type(model).__name__ == "CLIP" and not model.training
    assert all(not m.training for m in model.modules())
    assert model.dtype == reference.dtype == torch.float32
    assert_same_state(model.state_dict(), reference.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert all(p.requires_grad for p in model.parameters())
    assert model.visual.input_resolution == reference.visual.input_resolution
    assert model.context_length == reference.context_length and model.vocab_size == reference.vocab_size


@pytest.mark.parametrize("name", ALL_MODELS)
def test_archive_outputs_match_clip_load(name: str, loaded: Callable[[str, str], Loaded]) -> None:
    model, _, reference, _ = loaded(name, "archive")
    image, text = inputs(model)
    with torch.no_grad():
        pairs = [
            (model.encode_image(image), reference.encode_image(image)),
            (model.encode_text(text), reference.encode_text(text)),
            *zip(model(image, text), reference(image, text)),
        ]
    for got, expected in pairs:
        assert got.dtype == expected.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["RN50", "ViT-B/32"])  # files other tests generate anyway
def test_state_dict_file_equals_clip_load(name: str, loaded: Callable[[str, str], Loaded]) -> None:
    model, _, reference, _ = loaded(name, "state_dict")
    assert_same_state(model.state_dict(), reference.state_dict())
    image, text = inputs(model, batch=1)
    with torch.no_grad():
        for got, expected in zip(model(image, text), reference(image, text)):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [
        Image.fromarray(rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (517, 260, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(rng.integers(0, 256, (224, 224), dtype=np.uint8), "L"),
    ]


@pytest.mark.parametrize("name", ["RN50x4", "ViT-B/32", "ViT-L/14@336px"])
def test_preprocess_equals_clips(name: str, loaded: Callable[[str, str], Loaded]) -> None:
    _, preprocess, _, reference_preprocess = loaded(name, "archive")
    for image in _images():
        assert torch.equal(preprocess(image), reference_preprocess(image))


@pytest.mark.parametrize("device", ["cpu:0", torch.device("cpu"), torch.device("cpu", 0)])
def test_every_cpu_device_gives_fp32(device: Any, openai_archive: Callable[[str], Path]) -> None:
    """clip.load keeps fp16 weights for "cpu:0" (it compares str(device) with "cpu"); clipfast does not."""
    path = openai_archive("ViT-B/32")
    model, _ = clipfast.load(path, device=device)
    reference, _ = clip_load(path, device="cpu")
    assert_same_state(model.state_dict(), reference.state_dict())


def test_non_cpu_device_gets_clips_half_layout(openai_archive: Callable[[str], Path]) -> None:
    """The off-CPU path (copy to the device, convert there) on the meta device: dtypes as clip's."""
    path = openai_archive("RN50")
    model, _ = clipfast.load(path, device="meta")
    reference, _ = clip_load(path, device="meta")
    ours, theirs = model.state_dict(), reference.state_dict()
    assert [(k, t.dtype, t.shape, t.device.type) for k, t in ours.items()] == [
        (k, t.dtype, t.shape, t.device.type) for k, t in theirs.items()
    ]
    assert {t.dtype for t in ours.values()} == {torch.float16, torch.float32, torch.int64}
    assert model.dtype == torch.float16


def test_fp16_on_cpu_equals_clip_build_model(openai_archive: Callable[[str], Path]) -> None:
    import clip.model

    path = openai_archive("ViT-B/16")
    model, _ = clipfast.load(path, device="cpu", dtype=torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = clip.model.build_model(torch.jit.load(str(path), map_location="cpu").state_dict())
    assert_same_state(model.state_dict(), reference.state_dict())


def test_fp16_on_cpu_parses_the_file_once(
    openai_archive: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16 on the CPU (a plan that depends on which tensors are conv/linear weights) builds the
    model and reads the tensors from one parse of the file, not one for the shapes and another
    for the read (plus the unused one started ahead), and gives clip's half layout."""
    import clip.model
    import clipfast._native as native

    real = native.CheckpointReader
    parsed: list[str] = []

    def counting(file: str) -> object:
        parsed.append(file)
        return real(file)

    monkeypatch.setattr(native, "CheckpointReader", counting)
    path = openai_archive("RN50")
    model, _ = clipfast.load(path, device="cpu", dtype=torch.float16)
    assert parsed == [str(path)]
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = clip.model.build_model(torch.jit.load(str(path), map_location="cpu").state_dict())
    assert_same_state(model.state_dict(), reference.state_dict())


def test_dtype_callable_and_fp64(openai_archive: Callable[[str], Path]) -> None:
    """Values, not only dtypes: each tensor is the stored one converted by torch's rounding."""
    path = openai_archive("RN101")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stored = torch.jit.load(str(path), map_location="cpu").state_dict()
    reference, _ = clip_load(path)  # fp32, clip's values
    model, _ = clipfast.load(path, device="cpu", dtype=torch.float64)
    assert {t.dtype for t in model.state_dict().values()} == {torch.float64, torch.int64}
    assert_same_state(
        model.state_dict(),
        {k: v.double() if v.is_floating_point() else v for k, v in reference.state_dict().items()},
    )
    bf16 = {"visual.attnpool.c_proj.weight"}
    model, _ = clipfast.load(
        path, device="cpu", dtype=lambda name, stored: torch.bfloat16 if name in bf16 else torch.float32
    )
    assert model.visual.attnpool.c_proj.weight.dtype == torch.bfloat16
    assert torch.equal(
        model.visual.attnpool.c_proj.weight, stored["visual.attnpool.c_proj.weight"].to(torch.bfloat16)
    )
    others = {k: v for k, v in model.state_dict().items() if k not in bf16}
    expected = {k: v for k, v in reference.state_dict().items() if k not in bf16}
    assert_same_state(others, expected)


@pytest.mark.parametrize("name", ["RN50", "ViT-B/32"])
def test_fp64_model_runs(openai_archive: Callable[[str], Path], name: str) -> None:
    """A model loaded with dtype=torch.float64 computes in float64, layer norms included (clip's
    LayerNorm casts to fp32, which torch refuses beside fp64 weights), and agrees with clip's fp32
    model to fp32's precision."""
    path = openai_archive(name)
    reference, _ = clip_load(path)
    model, _ = clipfast.load(path, device="cpu", dtype=torch.float64)
    size = reference.visual.input_resolution
    image = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    text = clipfast.tokenize(["a photo of a dog", "a diagram"])
    with torch.no_grad():
        for got, want in (
            (model.encode_image(image.double()), reference.encode_image(image)),
            (model.encode_text(text), reference.encode_text(text)),
        ):
            assert got.dtype == torch.float64
            torch.testing.assert_close(got, want.double(), rtol=1e-4, atol=1e-4)


def test_mmap_load_equals_clip(openai_archive: Callable[[str], Path]) -> None:
    path = openai_archive("ViT-B/32")
    model, _ = clipfast.load(path, device="cpu", mmap=True)
    reference, _ = clip_load(path)
    assert_same_state(model.state_dict(), reference.state_dict())


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """The address ranges of this process mapped from ``path`` (/proc/self/maps)."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == str(path):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                out.append((start, end))
    return out


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux only")
def test_mmap_backs_weights_by_the_file_and_the_default_does_not(tmp_path: Path) -> None:
    """mmap=True: every weight whose dtype does not change is a view of the file's mapping; the
    default (mmap=False): none is, and the model still works after the file is truncated."""
    path = _testing.write_state_dict(tmp_path / "fp32.pt", _testing.tiny("ViT-B/32"))
    torch.save({k: v.float() for k, v in torch.load(path, weights_only=True).items()}, path)

    def mapped(model: Any) -> list[bool]:
        ranges = _mapped_ranges(path.resolve())
        return [
            any(a <= t.data_ptr() < b for a, b in ranges) for t in model.state_dict().values() if t.numel()
        ]

    by_map, _ = clipfast.load(path, device="cpu", mmap=True)
    assert all(mapped(by_map)), "mmap=True: every fp32 weight is read from the file's map"
    owned, _ = clipfast.load(path, device="cpu")
    assert not any(mapped(owned)), "mmap=False: no weight may depend on the file"
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = owned.encode_image(image)
    del by_map  # its map would make the truncated pages fault (SIGBUS), as documented
    with open(path, "r+b") as f:
        f.truncate(0)
    with torch.no_grad():
        assert torch.equal(owned.encode_image(image), before)


def test_build_model_is_a_drop_in(openai_archive: Callable[[str], Path]) -> None:
    import clip.model
    import clipfast.model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = torch.jit.load(str(openai_archive("RN50x16")), map_location="cpu").state_dict()
    ours_input, theirs_input = OrderedDict(state), OrderedDict(state)
    ours = clipfast.model.build_model(ours_input)
    theirs = clip.model.build_model(theirs_input)
    assert list(ours_input) == list(theirs_input)  # the archive-only buffers are deleted, as clip does
    assert not ours.training
    assert_same_state(ours.state_dict(), theirs.state_dict())
    # The model owns its tensors: changing the input afterwards does not change the model.
    key = "visual.conv1.weight"
    state[key].zero_()
    assert ours.state_dict()[key].abs().sum() > 0


def test_jit_on_a_state_dict_warns_and_loads_eagerly(state_dict_file: Callable[[str], Path]) -> None:
    path = state_dict_file("ViT-B/32")
    with pytest.warns(UserWarning, match="not a JIT archive"):
        model, _preprocess = clipfast.load(path, device="cpu", jit=True)
    reference, _ = clip_load(path)
    assert_same_state(model.state_dict(), reference.state_dict())


def test_jit_archive_goes_to_load_jit(openai_archive: Callable[[str], Path], monkeypatch: Any) -> None:
    import clipfast.jit

    path = openai_archive("ViT-L/14@336px")
    calls: list[tuple[str, Any]] = []

    class Scripted:
        input_resolution = torch.tensor(336)

    def fake_load_jit(p: str, device: Any, dtype: Any = None) -> Any:
        calls.append((p, device))
        return Scripted()

    monkeypatch.setattr(clipfast.jit, "load_jit", fake_load_jit)
    model, preprocess = clipfast.load(path, device="cpu", jit=True)
    assert calls == [(str(path), "cpu")] and isinstance(model, Scripted)
    assert preprocess.transforms[0].size == 336


def test_jit_true_matches_clip(openai_archive: Callable[[str], Path]) -> None:
    path = openai_archive("RN50")
    model, _ = clipfast.load(path, device="cpu", jit=True)
    reference, _ = clip_load(path, jit=True)
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(image), reference.encode_image(image), rtol=0, atol=1e-5
        )


def test_named_model_goes_to_resolve_model(
    openai_archive: Callable[[str], Path], monkeypatch: Any, tmp_path: Path
) -> None:
    import sys

    download_module = sys.modules["clipfast.download"]  # `clipfast.download` is the function
    path = openai_archive("ViT-B/32")
    calls: list[tuple[Any, ...]] = []

    def fake_resolve(name: str, root: str | None = None, *, verify: bool = False) -> str:
        calls.append((name, root, verify))
        return str(path)

    monkeypatch.setattr(download_module, "resolve_model", fake_resolve)
    model, _ = clipfast.load("ViT-B/32", device="cpu", download_root=str(tmp_path), verify=True)
    assert calls == [("ViT-B/32", str(tmp_path), True)]
    assert model.visual.input_resolution == 224


# --- bad input -------------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path: Path) -> None:
    for name in (str(tmp_path / "nope.pt"), str(tmp_path), "ViT-B/33"):
        with pytest.raises(ModelNotFoundError, match="not found; available models") as info:
            clipfast.load(name, device="cpu")
        assert name in str(info.value)
        assert isinstance(info.value, RuntimeError) and isinstance(info.value, FileNotFoundError)


def test_empty_and_garbage_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    for path in (empty, garbage):
        with pytest.raises(CheckpointError) as info:
            clipfast.load(path, device="cpu")
        assert str(path) in str(info.value)


def test_truncated_archive(openai_archive: Callable[[str], Path], tmp_path: Path) -> None:
    data = openai_archive("ViT-B/32").read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        clipfast.load(path, device="cpu")
    assert str(path) in str(info.value)


class _Call:
    """Pickles as a call of ``func(*args)``: what a malicious checkpoint holds in place of a weight."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.Popen"])
@pytest.mark.parametrize("where", ["weight", "top"])
def test_pickle_naming_code_is_refused_not_run(target: str, where: str, tmp_path: Path) -> None:
    import builtins
    import pickle
    import subprocess

    marker = tmp_path / "ran"
    func = {"os.system": os.system, "builtins.eval": builtins.eval, "subprocess.Popen": subprocess.Popen}[
        target
    ]
    arg: Any = f"open({str(marker)!r}, 'w')" if target == "builtins.eval" else f"touch {marker}"
    if target == "subprocess.Popen":
        arg = ["touch", str(marker)]
    call = _Call(func, arg)
    obj: Any = call if where == "top" else OrderedDict([("visual.proj", call)])
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(obj, protocol=2))
        archive.writestr("evil/version", "3\n")
        archive.writestr("evil/byteorder", "little")
    with pytest.raises(UnsafeCheckpointError) as info:
        clipfast.load(path, device="cpu")
    assert str(path) in str(info.value)
    assert func.__name__ in str(info.value)
    assert not marker.exists()


def _save_edited(state_dict_file: Callable[[str], Path], tmp_path: Path, name: str, edit: Any) -> Path:
    state = torch.load(state_dict_file(name), map_location="cpu", weights_only=True)
    edit(state)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("RN50", lambda s: [s.pop(k) for k in list(s) if k.startswith("visual.")], r"visual\.\*"),
        ("ViT-B/32", lambda s: s.update({"visual.proj": torch.zeros(64, 31)}), "'visual.proj'"),
        (
            "ViT-B/32",
            lambda s: s.update({"transformer.resblocks.1.mlp.c_fc.weight": torch.zeros(255, 64)}),
            r"'transformer\.resblocks\.1\.mlp\.c_fc\.weight' has shape \[255, 64\]",
        ),
        ("RN50", lambda s: s.pop("visual.layer2.0.bn1.running_var"), "visual.layer2.0.bn1.running_var"),
        ("RN50", lambda s: s.update({"extra.weight": torch.zeros(2)}), "unexpected tensors"),
        (
            "ViT-B/16",
            lambda s: s.update({"positional_embedding": torch.zeros(77, 32)}),
            "positional_embedding",
        ),
    ],
)
def test_inconsistent_checkpoints_raise_architecture_error(
    name: str, edit: Any, message: str, state_dict_file: Callable[[str], Path], tmp_path: Path
) -> None:
    path = _save_edited(state_dict_file, tmp_path, name, edit)
    with pytest.raises(ArchitectureError, match=message) as info:
        clipfast.load(path, device="cpu")
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["RN50", "ViT-B/32"])
def test_cuda_matches_clip_load(name: str, openai_archive: Callable[[str], Path]) -> None:
    path = openai_archive(name)
    model, _ = clipfast.load(path, device="cuda")
    reference, _ = clip_load(path, device="cuda")
    assert_same_state(model.state_dict(), reference.state_dict())
    image, text = inputs(model, batch=2)
    image, text = image.cuda(), text.cuda()
    assert model.dtype == reference.dtype == torch.float16
    with torch.no_grad():  # same weights, same kernels: fp16 results agree to torch's fp16 tolerance
        torch.testing.assert_close(model.encode_image(image), reference.encode_image(image))
        torch.testing.assert_close(model.encode_text(text), reference.encode_text(text))
        for got, expected in zip(model(image, text), reference(image, text)):
            torch.testing.assert_close(got, expected)


def test_load_does_not_wake_torchs_compiler(openai_archive: Callable[[str], Path]) -> None:
    """Arithmetic or randn on meta tensors runs through Python decompositions that import sympy and
    torch._dynamo: seconds of a load that should take a fraction of one."""
    import subprocess
    import sys

    code = (
        "import sys, warnings; warnings.filterwarnings('ignore'); import torch\n"
        "heavy = ('sympy', 'torch._dynamo', 'torch._inductor')\n"
        "before = {m for m in heavy if m in sys.modules}  # torch 2.1 imports sympy itself\n"
        "import clipfast\n"
        f"clipfast.load({str(openai_archive('RN50'))!r}, device='cpu')\n"
        f"clipfast.load({str(openai_archive('ViT-B/32'))!r}, device='meta')\n"
        "loaded = [m for m in heavy if m in sys.modules and m not in before]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "variant",
    ["safetensors", "fp32", "bf16", "wrapped", "ddp", "non_contiguous", "no_num_batches_tracked"],
)
def test_other_layouts_of_the_same_weights(
    variant: str, state_dict_file: Callable[[str], Path], tmp_path: Path
) -> None:
    """What fine-tuners save: other containers and dtypes of OpenAI's keys load as clip.load would."""
    source = state_dict_file("RN50")
    state = torch.load(source, map_location="cpu", weights_only=True)
    path = tmp_path / f"{variant}.pt"
    if variant == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file(dict(state), str(path))
    elif variant == "fp32":
        torch.save({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, path)
    elif variant == "bf16":
        torch.save({k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()}, path)
    elif variant == "wrapped":
        torch.save({"epoch": 3, "state_dict": state}, path)
    elif variant == "ddp":  # saved from a (Distributed)DataParallel wrapper, as open_clip's training does
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif variant == "no_num_batches_tracked":  # older BatchNorm state: torch fills in zeros
        torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    else:  # a transposed view, as a hand-edited checkpoint might hold
        key = "visual.attnpool.c_proj.weight"
        state[key] = state[key].t().contiguous().t()
        torch.save(state, path)
    model, _ = clipfast.load(path, device="cpu")
    reference, _ = clip_load(source)
    if variant == "bf16":  # rounded through bfloat16: compare with the same rounding
        expected = {
            k: v.bfloat16().float() if v.is_floating_point() else v for k, v in reference.state_dict().items()
        }
        assert_same_state(model.state_dict(), expected)
    else:
        assert_same_state(model.state_dict(), reference.state_dict())


def test_ddp_checkpoint_plans_see_model_names(state_dict_file: Callable[[str], Path], tmp_path: Path) -> None:
    """A dtype callable is asked with the model's key names, with or without the wrapper prefix;
    a file where only some keys carry it is not a CLIP checkpoint."""
    state = torch.load(state_dict_file("ViT-B/32"), map_location="cpu", weights_only=True)
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    seen: list[str] = []

    def plan(name: str, stored: torch.dtype) -> torch.dtype:
        seen.append(name)
        return torch.float64 if name == "visual.proj" else torch.float32

    model, _ = clipfast.load(path, device="cpu", dtype=plan)
    assert sorted(seen) == sorted(k for k, v in state.items() if v.is_floating_point())
    assert model.visual.proj.dtype == torch.float64 and model.visual.conv1.weight.dtype == torch.float32
    assert torch.equal(model.visual.proj, state["visual.proj"].double())

    mixed = tmp_path / "mixed.pt"
    torch.save({(f"module.{k}" if k.startswith("visual.") else k): v for k, v in state.items()}, mixed)
    with pytest.raises(clipfast.ArchitectureError, match=r"mixed\.pt"):
        clipfast.load(mixed, device="cpu")


class TrainerState(dict):  # type: ignore[type-arg]
    """A training framework's own container class around the weights (needs its code to unpickle)."""


@pytest.mark.parametrize("kind", ["archive", "state_dict", "own_class"])
def test_weights_only_false_uses_torch_load(
    kind: str, openai_archive: Callable[[str], Path], state_dict_file: Callable[[str], Path], tmp_path: Path
) -> None:
    """weights_only=False reads with torch's own unpickler: the same model for ordinary files, and
    files the restricted reader refuses (weights inside a class of the file's framework) load."""
    source = openai_archive("RN50") if kind == "archive" else state_dict_file("RN50")
    path = source
    if kind == "own_class":
        state = torch.load(state_dict_file("RN50"), map_location="cpu", weights_only=True)
        path = tmp_path / "trainer.pt"
        torch.save(
            {"epoch": 2, "state_dict": TrainerState({f"module.{k}": v for k, v in state.items()})}, path
        )
        with pytest.raises(UnsafeCheckpointError, match=r"trainer\.pt.*\"state_dict\" is .*TrainerState"):
            clipfast.load(path, device="cpu")
    model, preprocess = clipfast.load(path, device="cpu", weights_only=False)
    expected, _ = clipfast.load(source, device="cpu")
    assert_same_state(model.state_dict(), expected.state_dict())
    assert not model.training and preprocess.transforms[0].size == expected.visual.input_resolution
    half, _ = clipfast.load(path, device="cpu", weights_only=False, dtype=torch.float16)
    assert half.visual.conv1.weight.dtype == torch.float16 and half.visual.bn1.weight.dtype == torch.float32


def test_weights_only_false_errors_name_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        clipfast.load(junk, device="cpu", weights_only=False)
    numbers = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "lr": 0.1}, numbers)
    with pytest.raises(CheckpointError, match=r"numbers\.pt.*no tensors"):
        clipfast.load(numbers, device="cpu", weights_only=False)


@pytest.mark.parametrize("name", ["ViT-B/32", "RN50"])
def test_meta_model_blocks_are_independent(name: str) -> None:
    """Repeated blocks of a meta model are copies of the first: every module, tensor and hook table
    must still be its own, as if each block had been constructed."""
    from clipfast.arch import infer_architecture
    from clipfast.model import construct_on_meta

    reference = _testing.build_reference_model(_testing.tiny(name, text_layers=3))
    model = construct_on_meta(infer_architecture(reference.state_dict()))
    params = list(model.named_parameters(remove_duplicate=False))
    assert len({id(p) for _, p in params}) == len(params) == len(list(reference.parameters()))
    assert all(p.is_meta and type(p) is torch.nn.Parameter and p.requires_grad for _, p in params)
    buffers = [b for _, b in model.named_buffers(remove_duplicate=False)]
    assert len({id(b) for b in buffers}) == len(buffers)
    modules = [m for _, m in model.named_modules(remove_duplicate=False)]  # torch 2.1: no modules(...)
    assert len({id(m) for m in modules}) == len(modules)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    blocks = list(model.transformer.resblocks)
    blocks[1].register_forward_hook(lambda *args: None)
    blocks[1].mlp.c_fc.in_features = -1
    assert not blocks[0]._forward_hooks and not blocks[2]._forward_hooks
    assert blocks[0].mlp.c_fc.in_features == blocks[2].mlp.c_fc.in_features > 0
    assert blocks[0].attn_mask is blocks[2].attn_mask is not None  # shared, as clip's blocks share it


@pytest.mark.parametrize(
    ("dtype", "error"), [("fp16", TypeError), (torch.int8, ValueError), (3, TypeError), (None, None)]
)
def test_bad_dtype_fails_before_reading(dtype: Any, error: Any, tmp_path: Path) -> None:
    """A dtype of the wrong type is a TypeError, a non-floating dtype a ValueError: before the
    file is looked at (a missing file would be a ModelNotFoundError)."""
    if error is None:
        with pytest.raises(ModelNotFoundError):
            clipfast.load(tmp_path / "never-read.pt", device="cpu", dtype=dtype)
        return
    with pytest.raises(error, match="dtype") as raised:
        clipfast.load(tmp_path / "never-read.pt", device="cpu", dtype=dtype)
    assert type(raised.value) is error


def test_load_then_fork_does_not_hang(
    openai_archive: Callable[[str], Path], fork_after: Callable[..., None]
) -> None:
    """A forked worker (which, like DataLoader's, sets torch to one thread) loads after its parent
    did: the conversion's threads are the call's own, none are waited for that fork left behind."""
    path = str(openai_archive("RN50"))
    fork_after(
        f"""
        import clipfast, torch
        a = clipfast.load({path!r}, device='cpu')[0].state_dict()
        """,
        f"""
        torch.set_num_threads(1)
        b = clipfast.load({path!r}, device='cpu')[0].state_dict()
        ok = all(torch.equal(a[k], b[k]) for k in a)
        """,
        timeout=180,
    )


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("stored", [torch.float32, torch.float16])
def test_one_tensor_under_two_names_gives_two_parameters(
    tmp_path: Path, mmap: bool, stored: torch.dtype
) -> None:
    """A file storing one tensor under two names (torch.save keeps them one storage): clip's
    load_state_dict copies each into its own parameter, so updating one leaves the other as it was.
    The read kept them shared and assign made one memory of two parameters (found by a probe that
    updated ln_final.bias of such a file's model: visual.ln_post.bias changed with it)."""
    path = _testing.write_state_dict(tmp_path / "tied.pt", _testing.tiny("ViT-B/32"))
    state = {
        k: v.to(stored) if v.is_floating_point() else v
        for k, v in torch.load(path, weights_only=True).items()
    }
    state["visual.ln_post.bias"] = state["ln_final.bias"]
    torch.save(state, path)
    model, _ = clipfast.load(path, device="cpu", mmap=mmap)
    reference, _ = clip_load(path)
    assert_same_state(model.state_dict(), reference.state_dict())
    with torch.no_grad():
        model.ln_final.bias.add_(1)
        reference.ln_final.bias.add_(1)
    assert_same_state(model.state_dict(), reference.state_dict())
    assert torch.equal(model.visual.ln_post.bias, state["visual.ln_post.bias"].float())


@pytest.mark.parametrize("case", ["transposed", "tied", "fp16_tied"])
def test_steps_that_read_values_wait_for_the_conversion(
    case: str, state_dict_file: Callable[[str], Path], tmp_path: Path, conversion_held_back: list[int]
) -> None:
    """The model gets its tensors while the conversion still fills them; the steps that copy a
    tensor (made contiguous, or unshared from another name) wait for it first. With the conversion
    held back until then, a step that did not wait would copy unfilled memory (zeros)."""
    source = state_dict_file("RN50")
    state = torch.load(source, map_location="cpu", weights_only=True)
    path = tmp_path / f"{case}.pt"
    if case == "transposed":
        key = "visual.attnpool.c_proj.weight"
        state[key] = state[key].t().contiguous().t()
    else:  # one storage under two names: fp16 -> a converted copy, fp32 -> copied as it is
        dtype = torch.float16 if case == "fp16_tied" else torch.float32
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        state["visual.layer2.0.bn3.bias"] = state["ln_final.bias"]  # both 512 wide
    torch.save(state, path)
    model, _ = clipfast.load(path, device="cpu")
    assert conversion_held_back[0] == 1  # this load went the way under test
    reference, _ = clip_load(path)
    assert_same_state(model.state_dict(), reference.state_dict())


def test_a_conversion_error_after_the_model_is_assembled_returns_nothing(
    state_dict_file: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model is assembled while the conversion runs; a conversion that fails (here: the file
    cut short after the parse) fails the load with the reader's error, not a model of unfilled
    weights."""
    from clipfast import checkpoint

    path = tmp_path / "cut.pt"
    # float32 as the load wants it: every tensor is copied with pread(), which reports the cut
    # (a conversion reading the map would meet SIGBUS, as torch.load(mmap=True) does).
    state = torch.load(state_dict_file("RN50"), map_location="cpu", weights_only=True)
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, path)
    real_start = checkpoint._PendingRead.start

    def start(self: Any) -> None:
        with open(path, "r+b") as f:  # the parse is done: the data goes away under the reader
            f.truncate(os.path.getsize(path) // 2)
        real_start(self)

    monkeypatch.setattr(checkpoint._PendingRead, "start", start)
    with pytest.raises(CheckpointError, match="truncated while loading"):
        clipfast.load(path, device="cpu")
