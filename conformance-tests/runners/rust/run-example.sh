#!/usr/bin/env bash
# Execs a built example of the Rust workspace: run-example.sh <name> [args...].
# Resolves the cargo target dir the way cargo does: $CARGO_TARGET_DIR (CI sets
# it outside the repository) or rust/target. Cargo reads a relative
# CARGO_TARGET_DIR from its cwd, which for the build command is this folder.
# RRQ_EXAMPLE_PROFILE=release runs the release build instead (make bench).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workspace="$(cd "$here/../../../rust" && pwd)"
target="${CARGO_TARGET_DIR:-$workspace/target}"
case "$target" in
  /*) ;;
  *) target="$here/$target" ;;
esac
name="$1"
shift
exec "$target/${RRQ_EXAMPLE_PROFILE:-debug}/examples/$name" "$@"
