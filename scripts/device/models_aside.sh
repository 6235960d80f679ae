#!/usr/bin/env bash
# Before a lease's chunk calls: `out` moves every tracked models/**/*.safetensors to KIT/models_out (a call
# carries the tree plus one chunk, at most 64 MiB; commit nothing meanwhile); `in` puts them back. Prints what
# `git status --short` then counts (0 after `in` on a clean tree).
set -euo pipefail
KIT=${KIT:-/work/kit}; S=$KIT/models_out
[ -e pyproject.toml ] && [ -d models ] || { echo "run in the repository root" >&2; exit 2; }
case ${1:?out or in} in
out) git ls-files 'models/*.safetensors' 'models/**/*.safetensors' | sort -u | while read -r f; do
       mkdir -p "$S/$(dirname "$f")" && mv "$f" "$S/$f"; done ;;
in)  [ -d $S ] && (cd $S && find . -name '*.safetensors') | while read -r f; do
       mkdir -p "$(dirname "$f")" && mv "$S/$f" "$f"; done ;;
*)   echo "out or in" >&2; exit 2 ;;
esac
git status --short | wc -l
