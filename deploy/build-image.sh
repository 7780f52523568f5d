#!/usr/bin/env bash
# Builds the statically linked meridian binary and the `meridian:latest`
# image around it. Usage: deploy/build-image.sh [tag]
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-meridian:latest}"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu -p meridian-server --bin meridian
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp target/x86_64-unknown-linux-gnu/release/meridian "$context/meridian"
# Debug info stays in the build tree; the image carries only what runs.
if command -v strip >/dev/null 2>&1; then strip "$context/meridian"; fi
cp deploy/Dockerfile "$context/Dockerfile"
docker build --quiet --tag "$tag" "$context" >/dev/null
echo "built image $tag ($(du -h "$context/meridian" | cut -f1) binary)"
