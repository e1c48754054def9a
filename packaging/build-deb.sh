#!/usr/bin/env bash
# Builds target/debian/sluice_<version>-1_<arch>.deb: the release binary,
# man pages and completions generated from the clap definitions, then
# cargo-deb (installed from crates.io if missing), then lintian if present.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
cargo build --release --quiet
rm -rf target/docs
target/release/sluice gen-docs --out target/docs
deb=$(cargo deb --no-build --strip --quiet | tail -n 1)
echo "$deb"
if command -v lintian >/dev/null; then
  lintian --fail-on error --suppress-tags-from-file packaging/lintian-suppressed "$deb"
fi
