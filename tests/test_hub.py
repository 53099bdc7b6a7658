"""hf-hub: names: Hugging Face's cache layout, offline mode, and downloads from a local stand-in hub."""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from clipfast import hub
from clipfast.errors import DownloadError, MissingDependencyError, ModelNotFoundError
from hf_cache import FakeHub, commit_of, etag, write_cached_repo

CONFIG = b'{"model_cfg": {"embed_dim": 32}}'
WEIGHTS = os.urandom(4096)  # large enough to be an LFS file (etag = sha256)

_HUB_VARIABLES = (
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HOME",
    "XDG_CACHE_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "CLIPFAST_OFFLINE",
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache that HF_HUB_CACHE points to; the other hub variables unset."""
    for variable in _HUB_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    return folder


@pytest.fixture
def fake_hub(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A stand-in hub on 127.0.0.1 that huggingface_hub talks to instead of huggingface.co."""
    from huggingface_hub import constants

    server = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        yield server
    finally:
        server.stop()


def test_parse_hub_names() -> None:
    assert hub.parse_hub_name("hf-hub:laion/CLIP-ViT-B-32") == hub.HubName("laion/CLIP-ViT-B-32")
    assert hub.parse_hub_name("hf-hub:org/name@v1.0") == hub.HubName("org/name", "v1.0")
    assert str(hub.HubName("org/name", "abc")) == "hf-hub:org/name@abc"
    assert hub.is_hub_name("hf-hub:x/y") and not hub.is_hub_name("x/y") and not hub.is_hub_name(3)
    for bad in (
        "hf-hub:",
        "hf-hub:a/b/c",
        "hf-hub:../x",
        "hf-hub:a/..",
        "hf-hub:org/name@",
        "hf-hub:/x",
        "x",
    ):
        with pytest.raises(ModelNotFoundError, match=r"hf-hub|hub name"):
            hub.parse_hub_name(bad)


def test_cache_dir_follows_huggingface_hub_rules(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub.cache_dir() == str(cache)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", "/a/legacy")
    assert hub.cache_dir() == "/a/legacy"
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", "/b/home")
    monkeypatch.setenv("XDG_CACHE_HOME", "/c/xdg")
    assert hub.cache_dir() == "/b/home/hub"
    monkeypatch.delenv("HF_HOME")
    assert hub.cache_dir() == "/c/xdg/huggingface/hub"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hub.cache_dir() == os.path.expanduser("~/.cache/huggingface/hub")


def test_cache_dir_agrees_with_huggingface_hub(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference reads the same variables at import: compare in a fresh interpreter per case."""
    import subprocess
    import sys

    cases = [
        {"HF_HUB_CACHE": "/x/1"},
        {"HUGGINGFACE_HUB_CACHE": "/x/2", "HF_HOME": "/x/3"},
        {"HF_HOME": "/x/4", "XDG_CACHE_HOME": "/x/5"},
        {"XDG_CACHE_HOME": "/x/6"},
    ]
    for case in cases:
        env = {k: v for k, v in os.environ.items() if k not in _HUB_VARIABLES} | case
        code = "from huggingface_hub import constants; print(constants.HF_HUB_CACHE)"
        reference = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        for variable in _HUB_VARIABLES:
            monkeypatch.delenv(variable, raising=False)
        for key, value in case.items():
            monkeypatch.setenv(key, value)
        assert hub.cache_dir() == reference.stdout.strip(), case


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "CLIPFAST_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_reads_the_cache_as_laid_out_by_huggingface_hub(
    cache: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    files = {"open_clip_config.json": CONFIG, "open_clip_model.safetensors": WEIGHTS}
    snapshot = write_cached_repo(cache, "org/model", files)
    monkeypatch.setenv(variable, "1")
    repo = hub.HubRepo("hf-hub:org/model")
    assert repo.offline and repo.commit == commit_of(files)
    path = repo.file("open_clip_model.safetensors")
    assert path == str(snapshot / "open_clip_model.safetensors")
    assert Path(path).read_bytes() == WEIGHTS
    assert os.path.islink(path) and Path(os.path.realpath(path)).name == etag(WEIGHTS)
    assert repo.file("open_clip_pytorch_model.bin") is None  # not cached
    assert repo.first(["open_clip_pytorch_model.bin", "open_clip_model.safetensors"]) == (
        "open_clip_model.safetensors",
        path,
    )


def test_offline_lookup_agrees_with_huggingface_hub(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import try_to_load_from_cache

    old = write_cached_repo(cache, "org/model", {"config.json": b"{}", "model.safetensors": WEIGHTS})
    new = write_cached_repo(cache, "org/model", {"config.json": b'{"a": 1}'})  # refs/main moves on
    write_cached_repo(cache, "org/model", {"config.json": b'{"b": 2}'}, ref="v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, revision in (("hf-hub:org/model", None), ("hf-hub:org/model@v2", "v2")):
        repo = hub.HubRepo(name)
        for filename in ("config.json", "model.safetensors", "missing.bin"):
            reference = try_to_load_from_cache("org/model", filename, cache_dir=cache, revision=revision)
            assert repo.file(filename) == (reference if isinstance(reference, str) else None), (
                name,
                filename,
            )
    pinned = hub.HubRepo(f"hf-hub:org/model@{old.name}")
    assert pinned.file("model.safetensors") == str(old / "model.safetensors")
    assert hub.HubRepo("hf-hub:org/model").folder == str(new)


def test_offline_name_not_in_cache_is_a_typed_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPFAST_OFFLINE", "1")
    with pytest.raises(
        ModelNotFoundError, match=r"hf-hub:org/absent is not in the Hugging Face cache.*CLIPFAST_OFFLINE"
    ):
        hub.HubRepo("hf-hub:org/absent")
    write_cached_repo(cache, "org/model", {"config.json": b"{}"})
    with pytest.raises(ModelNotFoundError, match=r"hf-hub:org/model@dev: revision 'dev' is not in"):
        hub.HubRepo("hf-hub:org/model@dev")
    with pytest.raises(ModelNotFoundError, match="whose snapshot is not in"):
        hub.HubRepo("hf-hub:org/model@" + "0" * 40)
    # ModelNotFoundError is a FileNotFoundError: `except FileNotFoundError` code keeps working.
    assert issubclass(ModelNotFoundError, FileNotFoundError)


def test_offline_does_not_need_huggingface_hub(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cached_repo(cache, "org/model", {"config.json": b"{}"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hide_module(monkeypatch, "huggingface_hub")
    assert hub.HubRepo("hf-hub:org/model").file("config.json") is not None


def test_missing_huggingface_hub_says_how_to_install(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_module(monkeypatch, "huggingface_hub")
    with pytest.raises(
        MissingDependencyError, match=r"hf-hub:org/model.*pip install 'clipfast\[hf\]'"
    ) as info:
        hub.HubRepo("hf-hub:org/model")
    assert isinstance(info.value, ImportError)
    assert info.value.name == "huggingface_hub"  # the missing package, as the other such errors name it


@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_cli_without_huggingface_hub_says_how_to_install(
    command: str,
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``clipfast inspect`` / ``convert`` of a hub name online without huggingface_hub: the CLI's
    error line (exit 2) naming the extra, not a traceback."""
    from clipfast.cli import EXIT_ERROR, main

    _hide_module(monkeypatch, "huggingface_hub")
    argv = [command, "hf-hub:org/model"]
    if command == "convert":
        argv.append(str(tmp_path / "out.safetensors"))
    assert main(argv) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("clipfast: error: hf-hub:org/model") and "pip install 'clipfast[hf]'" in err, err


def _hide_module(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    import sys

    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, key)
    real_import = builtins.__import__

    def fake_import(module: str, *args: object, **kwargs: object) -> object:
        if module == name or module.startswith(name + "."):
            raise ImportError(f"No module named {module!r}")
        return real_import(module, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_download_pins_one_commit_and_fills_the_cache(cache: Path, fake_hub: FakeHub) -> None:
    first = fake_hub.publish(
        "org/model", {"open_clip_config.json": CONFIG, "open_clip_pytorch_model.bin": WEIGHTS}
    )
    repo = hub.HubRepo("hf-hub:org/model")
    config = repo.file("open_clip_config.json")
    assert repo.commit == first and config is not None and Path(config).read_bytes() == CONFIG
    # The repository moves on between two downloads: the second file still comes from `first`.
    fake_hub.publish("org/model", {"open_clip_config.json": b"{}", "open_clip_pytorch_model.bin": b"new"})
    assert repo.first(["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]) == (
        "open_clip_pytorch_model.bin",
        str(cache / "models--org--model" / "snapshots" / first / "open_clip_pytorch_model.bin"),
    )
    assert Path(repo.folder or "", "open_clip_pytorch_model.bin").read_bytes() == WEIGHTS
    resolved = [path for _, path in fake_hub.requests if "/resolve/" in path]
    assert all(f"/{first}/" in path or "/main/" in path for path in resolved), resolved
    # What was downloaded is then found offline, through the cache alone.
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        offline = hub.HubRepo("hf-hub:org/model")
        assert offline.file("open_clip_pytorch_model.bin") == str(
            Path(repo.folder or "", "open_clip_pytorch_model.bin")
        )
    finally:
        del os.environ["HF_HUB_OFFLINE"]


def test_download_errors_name_the_repository(cache: Path, fake_hub: FakeHub) -> None:
    fake_hub.publish("org/model", {"config.json": b"{}"})
    with pytest.raises(ModelNotFoundError, match=r"hf-hub:org/absent: repository not found"):
        hub.HubRepo("hf-hub:org/absent").file("config.json")
    with pytest.raises(ModelNotFoundError, match=r"hf-hub:org/model@nope: revision not found"):
        hub.HubRepo("hf-hub:org/model@nope").file("config.json")
    assert hub.HubRepo("hf-hub:org/model").file("model.safetensors") is None


def test_unreachable_hub_is_a_download_error(
    cache: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    from huggingface_hub.utils import _http

    fake_hub.stop()  # nothing listens on its port any more
    # huggingface_hub retries five times, 23 s of back-off in all: skip the waits here.
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(**{**vars(_http.time), "sleep": lambda s: None}))
    with pytest.raises(DownloadError, match=r"hf-hub:org/model: cannot fetch config.json"):
        hub.HubRepo("hf-hub:org/model").file("config.json")
    fake_hub.stop = lambda: None  # type: ignore[method-assign]


def test_unreachable_hub_reads_the_cached_snapshot(
    cache: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repository downloaded once, then loaded while the hub cannot be reached (and downloads are
    not turned off): the files its snapshot holds come from the cache, as huggingface_hub's
    hf_hub_download returns them; a file the repository does not have (open_clip_config.json of a
    transformers repository) is absent, not a DownloadError. Found by the hub probe: clipfast.load of
    an HF-only repository it had downloaded itself failed with a DownloadError, transformers loaded it."""
    import types

    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import _http

    commit = fake_hub.publish("org/model", {"config.json": b"{}", "model.safetensors": WEIGHTS})
    fake_hub.publish("org/uncached", {"config.json": b"{}"})
    online = hub.HubRepo("hf-hub:org/model")
    assert online.file("open_clip_config.json") is None and online.file("config.json") is not None
    assert online.first(["model.safetensors"]) is not None
    fake_hub.stop()
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(**{**vars(_http.time), "sleep": lambda s: None}))
    repo = hub.HubRepo("hf-hub:org/model")
    with pytest.warns(UserWarning, match=rf"hf-hub:org/model: the hub could not be reached.*{commit[:12]}"):
        repo.file("open_clip_config.json")  # not cached: the snapshot answers, and it is said
    for filename in ("open_clip_config.json", "config.json", "model.safetensors", "pytorch_model.bin"):
        try:
            expected: str | None = hf_hub_download("org/model", filename, cache_dir=cache)
        except LocalEntryNotFoundError:
            expected = None  # not cached: the snapshot of the revision says the file is absent
            assert not isinstance(try_to_load_from_cache("org/model", filename, cache_dir=cache), str)
        assert repo.file(filename) == expected, filename
    assert repo.commit == commit and repo.unreachable is not None
    # A weights file the snapshot lacks: a DownloadError (it may be on the hub, just not cached).
    error = repo.missing("weights", ["pytorch_model.bin"])
    assert isinstance(error, DownloadError) and "the hub could not be reached" in str(error)
    # A repository (or revision) not cached at all is still a DownloadError naming the file.
    with pytest.raises(DownloadError, match=r"hf-hub:org/uncached: cannot fetch config.json"):
        hub.HubRepo("hf-hub:org/uncached").file("config.json")
    with pytest.raises(DownloadError, match=r"hf-hub:org/model@v2: cannot fetch config.json"):
        hub.HubRepo("hf-hub:org/model@v2").file("config.json")
    fake_hub.stop = lambda: None  # type: ignore[method-assign]


def test_file_names_must_stay_inside_the_repository(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cached_repo(cache, "org/model", {"config.json": b"{}"})
    (cache / "secret").write_text("x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = hub.HubRepo("hf-hub:org/model")
    for bad in ("../../../secret", "/etc/passwd", "a/../../x", "", "a\\..\\b", "./config.json"):
        with pytest.raises(ValueError, match="not a file name inside the repository"):
            repo.file(bad)
