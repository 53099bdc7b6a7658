"""Fuzz targets for the configuration and index parsers (Python): Hugging Face ``config.json`` /
``preprocessor_config.json``, sharded ``*.index.json``, and open_clip's
``open_clip_config.json``. Whatever the bytes, each parser gives settings or a typed error
(``CheckpointError`` / ``ArchitectureError``, both ``ValueError``s naming the file); a shard index
never names a file outside its folder. Also ``clipfast embed``'s WebDataset tar listing (samples,
member ranges that read back their bytes).

    .venv/bin/python fuzz/configs.py hf_config CORPUS_DIR SEEDS_DIR -max_total_time=60

``check(target, data)`` is what each input goes through; tests/test_fuzz_corpora.py replays the
committed corpora through it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

WHERE = "fuzz/config.json"
_LOADED: dict[str, Any] = {}


def _setup() -> dict[str, Any]:
    if not _LOADED:
        from clipfast.errors import ArchitectureError, CheckpointError
        from clipfast.formats import huggingface, open_clip

        folder = tempfile.mkdtemp(prefix="clipfast-fuzz-")
        _LOADED.update(
            hf=huggingface,
            oc=open_clip,
            typed=(CheckpointError, ArchitectureError),
            file=os.path.join(folder, "open_clip_config.json"),
        )
    return _LOADED


def _typed(run: Callable[[], object]) -> object:
    """``run()``, with clipfast's typed errors (and warnings) as accepted outcomes."""
    m = _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return run()
        except m["typed"] as err:
            assert str(err).startswith(WHERE) or WHERE in str(err), f"error without the file: {err}"
            return None


def check_hf_config(data: bytes) -> None:
    hf = _setup()["hf"]
    config = _typed(lambda: hf.parse_config(data, WHERE))
    if isinstance(config, dict):
        _typed(lambda: hf.model_settings(config, WHERE))
        _typed(lambda: hf.preprocess_config(config, WHERE))


def check_hf_index(data: bytes) -> None:
    hf = _setup()["hf"]
    shards = _typed(lambda: hf.parse_shard_index(data, WHERE))
    if isinstance(shards, dict):
        for shard in shards.values():
            assert shard == os.path.basename(shard) and shard not in ("", ".", ".."), shard
            assert "\\" not in shard and "\0" not in shard, shard


def check_openclip_config(data: bytes) -> None:
    m = _setup()
    oc = m["oc"]
    path = m["file"]
    with open(path, "wb") as f:
        f.write(data)
    where = path

    def read() -> object:
        return oc.read_config(path)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            config = read()
            assert isinstance(config, dict)
            oc.model_settings(config["model_cfg"], where)
            oc.preprocess_config(config.get("preprocess_cfg"), where)
        except m["typed"] as err:
            assert where in str(err), f"error without the file: {err}"


def check_webdataset_tar(data: bytes) -> None:
    """``clipfast embed``'s WebDataset listing of a tar (embedding/sources.py): whatever the bytes,
    samples (a damaged archive is reported as a sample's error, not raised), each member range
    inside the file, and their bytes read back in place without error."""
    from clipfast.embedding import sources

    path = _setup()["file"] + ".tar"
    with open(path, "wb") as f:
        f.write(data)
    samples, _ = sources.list_samples([path], input_format="tar")
    handles: dict[str, int] = {}
    try:
        for sample in samples:
            for src in (sample.image, sample.caption_source):
                if src is None or src.offset < 0:
                    continue
                assert src.path == path and 0 <= src.offset and 0 <= src.size, src
                if src.offset + src.size <= len(data):
                    assert sources.read_source(src, handles) == data[src.offset : src.offset + src.size]
                else:  # a member cut short by the file's end: an error naming the file when read
                    try:
                        sources.read_source(src, handles)
                    except OSError as err:
                        assert path in str(err), err
                    else:
                        raise AssertionError(f"{src}: read past the end of a {len(data)}-byte file")
    finally:
        sources.close_handles(handles)


CHECKS: dict[str, Callable[[bytes], None]] = {
    "hf_config": check_hf_config,
    "hf_index": check_hf_index,
    "openclip_config": check_openclip_config,
    "webdataset_tar": check_webdataset_tar,
}


def check(target: str, data: bytes) -> None:
    CHECKS[target](data)


def main() -> None:
    import atheris

    run = CHECKS[sys.argv[1]]
    with atheris.instrument_imports(include=["clipfast", "json", "tarfile"]):
        _setup()
        if sys.argv[1] == "webdataset_tar":
            import clipfast.embedding.sources  # noqa: F401  (imported here to be instrumented)
    atheris.Setup([sys.argv[0], *sys.argv[2:]], run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
