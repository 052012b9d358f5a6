#!/usr/bin/env bash
# Fill .gpu-wheels/ (git-ignored) with the wheels the prepared GPU check (bench/gpu_check.py) needs on an
# air-gapped GPU node whose Python 3.12 already has torch, transformers, peft and accelerate, and print
# the folder's size beside the 64 MiB that a device run carries (the working tree included).
#
#   bash bench/gpu_wheels.sh            # from the repository root; needs pip and a package index
#   bash bench/gpu_wheels.sh --data     # also .gpu-data/ (git-ignored) for the check's part f: the embedded
#                                       # SmolLM2 tokenizer's files and WikiText-2 + wiki_demo text (3.4 MB)
#                                       # from ../shared/data (DATA_ROOT), through PYTHON (default .venv/bin/python)
#
# What goes in, at the versions requirements.lock pins:
#  - medtune's runtime dependencies (pyproject.toml) that such a node lacks, with their own missing
#    dependencies: pydantic (pydantic_core, annotated-types, typing-inspection, typing_extensions >= 4.16),
#    datasets (dill, multiprocess), optuna (alembic, SQLAlchemy, Mako, colorlog), gguf, platformdirs;
#  - not transformers or peft: medtune runs on the node's own (transformers 5.17: gradient checkpointing
#    is set through `gradient_checkpointing` where TrainingArguments has no `activation_checkpointing`);
#  - bitsandbytes (QLoRA, part b) with only its CUDA 13 and CPU libraries (the node's torch is built for
#    CUDA 13.0): the whole wheel is 41 MiB, 37 of them builds for CUDA 11/12, ROCm and XPU, and would not
#    fit beside the rest; slimmed it is 7 MiB. If it still does not fit it is left out, said so here, and
#    the check's part (b) reports "skipped: bitsandbytes is not installed".
# Everything else medtune imports (numpy, rich, click, PyYAML, tqdm, matplotlib, safetensors, pyarrow,
# huggingface-hub, requests, MarkupSafe) is on such a node already.
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=.gpu-wheels
DATA_DEST=.gpu-data
LIMIT=$((64 * 1024 * 1024))
NEEDED=(pydantic pydantic_core annotated-types typing-inspection typing_extensions datasets dill multiprocess
        optuna alembic SQLAlchemy Mako colorlog gguf platformdirs)
OPTIONAL=bitsandbytes
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done

pinned() {  # NAME==VERSION from requirements.lock (names compared case-insensitively, - and _ alike)
  local want
  want=$(echo "$1" | tr 'A-Z_' 'a-z-')
  while IFS= read -r line; do
    [[ "$(echo "${line%%==*}" | tr 'A-Z_' 'a-z-')" == "$want" ]] && { echo "$line"; return; }
  done < requirements.lock
  echo "gpu_wheels.sh: $1 is not pinned in requirements.lock" >&2
  exit 1
}

fetch() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$DEST" "$@"
}

tree_bytes() {  # what a device run carries besides the wheels: tracked files and untracked, not ignored, ones
  git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1
}

if [[ "${1:-}" == "--data" ]]; then
  rm -rf "$DATA_DEST"
  mkdir -p "$DATA_DEST/tokenizer"
  tok=$(PYTHONPATH=src "${PYTHON:-.venv/bin/python}" -c "from medtune import models; print(models.resolve('smollm2-135m').path)")
  cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$DATA_DEST/tokenizer/"
  replay="${DATA_ROOT:-../shared/data}/general/replay"
  cp "$replay/wikitext-2_test.tokens.txt" "$replay/wikitext-2_valid.tokens.txt" "$replay/wiki_demo.txt" "$DATA_DEST/"
fi
rm -rf "$DEST"
mkdir -p "$DEST"
specs=()
for name in "${NEEDED[@]}"; do specs+=("$(pinned "$name")"); done
fetch "${specs[@]}"
base=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
fetch "$(pinned "$OPTIONAL")"
# keep libbitsandbytes_cuda13*.so and _cpu.so (bitsandbytes loads the one matching torch.version.cuda)
zip -q -d "$DEST"/bitsandbytes-*.whl 'bitsandbytes/libbitsandbytes_cuda1[12]*.so' 'bitsandbytes/libbitsandbytes_rocm*' \
  'bitsandbytes/libbitsandbytes_xpu*'
wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(tree_bytes)
if [[ -d "$DATA_DEST" ]]; then tree=$((tree + $(du -sb "$DATA_DEST" | cut -f1))); fi
if (( wheels + tree > LIMIT )); then
  rm -f "$DEST"/bitsandbytes-*.whl
  echo "bitsandbytes does not fit: $(( (wheels - base) >> 20 )) MiB more than the rest; left out, so the" \
       "check's part (b) (QLoRA) will report skipped"
  wheels=$base
fi
ls -1 "$DEST"
printf 'wheels: %.1f MiB in %s; with the working tree and any .gpu-data (%.1f MiB): %.1f of %d MiB a device run carries\n' \
  "$(echo "$wheels / 1048576" | bc -l)" "$DEST" "$(echo "$tree / 1048576" | bc -l)" \
  "$(echo "($wheels + $tree) / 1048576" | bc -l)" $((LIMIT >> 20))
(( wheels + tree <= LIMIT )) || { echo "over the limit even without bitsandbytes" >&2; exit 1; }
