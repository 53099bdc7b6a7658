#!/usr/bin/env bash
# A virtual environment for scripts/clip_retrieval_check.py: clip-retrieval 2.45 pins numpy<2,
# pyarrow<16 and open_clip<3, which cannot share clipfast's .venv.
#
#   scripts/clip_retrieval_venv.sh VENV [PYTHON]
#
# torch (and torchvision, triton, the nvidia-* CUDA wheels: 3+ GB) is not downloaded again: the
# packages of clipfast's .venv are linked from a folder *outside* VENV, named by a .pth file, and
# pinned by a constraints file. pip sees them installed and leaves them alone; being outside the
# environment they are never uninstalled through it.
set -euo pipefail
venv=${1:?usage: clip_retrieval_venv.sh VENV [PYTHON]}
python=${2:-python3.11}
root=$(cd "$(dirname "$0")/.." && pwd)
main_site=$("$root/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
links="${venv%/}-torchlinks"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$links"
for entry in "$main_site"/torch "$main_site"/torch-*.dist-info "$main_site"/torchgen "$main_site"/functorch \
             "$main_site"/torchvision "$main_site"/torchvision-*.dist-info "$main_site"/torchvision.libs \
             "$main_site"/triton "$main_site"/triton-*.dist-info "$main_site"/nvidia "$main_site"/nvidia_*.dist-info; do
    [ -e "$entry" ] && ln -sfn "$entry" "$links/$(basename "$entry")"
done
echo "$links" > "$site/zz_clipfast_shared_torch.pth"
constraints=$(mktemp)
"$root/.venv/bin/python" -m pip list --format=freeze 2>/dev/null | grep -E '^(torch|torchvision|triton)==' > "$constraints"
"$venv/bin/python" -m pip install -q -c "$constraints" "clip-retrieval==2.45.0" "setuptools<81"
rm -f "$constraints"
"$venv/bin/python" -c 'import numpy, pyarrow, torch, clip_retrieval; print("clip-retrieval venv ready:", numpy.__version__, pyarrow.__version__, torch.__version__)'
