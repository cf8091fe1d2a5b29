#!/usr/bin/env bash
# Builds versioned, static walcake binaries into dist/ (git-ignored):
#
#   scripts/release.sh                  # version from `git describe --tags --always --dirty`
#   VERSION=v1.2.0 scripts/release.sh
#   PLATFORMS="linux/amd64" scripts/release.sh
#   OUT=/tmp/walcake-release scripts/release.sh     # elsewhere than dist/
#
# For each platform: dist/walcake-<version>-<os>-<arch>.tar.gz holding the
# binary, README.md and the docs; dist/SHA256SUMS lists the archives.
# `walcake --version` prints the version and commit given here. Builds are
# pure Go (CGO_ENABLED=0), path-independent (-trimpath) and stripped.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

version="${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
commit="${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo none)}"
platforms="${PLATFORMS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64}"
out="${OUT:-dist}"

if [[ ! "$version" =~ ^[A-Za-z0-9._+-]+$ ]]; then
	echo "release.sh: version $version: use letters, digits and . _ + -" >&2
	exit 2
fi

mkdir -p "$out"
archives=()
for platform in $platforms; do
	os="${platform%/*}"
	arch="${platform#*/}"
	name="walcake-${version}-${os}-${arch}"
	stage="$out/$name"
	rm -rf "$stage"
	mkdir -p "$stage"
	echo "release.sh: building $name" >&2
	CGO_ENABLED=0 GOOS="$os" GOARCH="$arch" go build -trimpath \
		-ldflags "-s -w -X main.version=${version} -X main.commit=${commit}" \
		-o "$stage/walcake" ./cmd/walcake
	cp README.md "$stage/"
	cp -r docs "$stage/docs"
	tar -C "$out" -czf "$out/$name.tar.gz" "$name"
	rm -rf "$stage"
	archives+=("$name.tar.gz")
done

(cd "$out" && sha256sum "${archives[@]}" >SHA256SUMS)
echo "release.sh: $version ($commit) in $out/:" >&2
(cd "$out" && ls -l "${archives[@]}" SHA256SUMS) >&2
