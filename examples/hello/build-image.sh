#!/usr/bin/env bash
# Builds the example image: busybox (from Debian's busybox-static) with a
# tiny web root, as an OCI image layout, tag "latest".
#
#   examples/hello/build-image.sh [OUT_DIR]     (default: examples/hello/image)
#
# compose.yaml refers to it as `image: oci:./image:latest`. The build is
# deterministic: the same busybox gives the same digests, byte for byte.
# Needs busybox-static, jq, tar and gzip (scripts/install-deps.sh).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/image}
BUSYBOX=${BUSYBOX:-/bin/busybox}
TAG=latest

die() {
  printf 'build-image: %s\n' "$*" >&2
  exit 1
}
for tool in jq tar gzip sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run scripts/install-deps.sh"
done
[[ -x $BUSYBOX ]] || die "$BUSYBOX not found: run scripts/install-deps.sh (package busybox-static)"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "$BUSYBOX is dynamically linked; the image needs busybox-static's"
fi

case $(uname -m) in
  x86_64) ARCH=amd64 ;;
  aarch64) ARCH=arm64 ;;
  armv7l) ARCH=arm ;;
  i?86) ARCH=386 ;;
  *) ARCH=$(uname -m) ;;
esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cntnr-hello-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOTFS=$WORK/rootfs
LAYOUT=$WORK/layout

# --- the root filesystem ----------------------------------------------------
mkdir -p "$ROOTFS"/{bin,etc,root,tmp,var/www,proc,sys,dev,run}
install -m 0755 "$BUSYBOX" "$ROOTFS/bin/busybox"
APPLETS=(
  sh ash cat cp echo env false grep hostname httpd id kill ls mkdir mv nc
  nslookup ping ps pwd rm sed sleep tail test top touch true uname wget
)
for applet in "${APPLETS[@]}"; do
  ln -s busybox "$ROOTFS/bin/$applet"
done
printf '%s\n' \
  'root:x:0:0:root:/root:/bin/sh' \
  'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$ROOTFS/etc/passwd"
printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$ROOTFS/etc/group"
printf 'hello from cntnr\n' >"$ROOTFS/var/www/index.html"
chmod 0644 "$ROOTFS/etc/passwd" "$ROOTFS/etc/group" "$ROOTFS/var/www/index.html"
find "$ROOTFS" -type d -exec chmod 0755 {} +
chmod 0700 "$ROOTFS/root"
chmod 1777 "$ROOTFS/tmp"

# --- blobs -----------------------------------------------------------------
mkdir -p "$LAYOUT/blobs/sha256"
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
# Moves a file into blobs/sha256/<digest> and prints the digest.
add_blob() {
  local digest
  digest=$(sha "$1")
  mv "$1" "$LAYOUT/blobs/sha256/$digest"
  printf '%s\n' "$digest"
}

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
  --format=gnu -C "$ROOTFS" -cf "$WORK/layer.tar" \
  bin dev etc proc root run sys tmp var
DIFF_ID=$(sha "$WORK/layer.tar")
gzip -n -9 "$WORK/layer.tar"
LAYER_SIZE=$(size "$WORK/layer.tar.gz")
LAYER=$(add_blob "$WORK/layer.tar.gz")

jq -cn --arg arch "$ARCH" --arg diff "sha256:$DIFF_ID" '{
  created: "1970-01-01T00:00:00Z",
  architecture: $arch,
  os: "linux",
  config: {
    Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    Entrypoint: ["/bin/busybox"],
    Cmd: ["httpd", "-f", "-v", "-p", "8080", "-h", "/var/www"],
    WorkingDir: "/",
    ExposedPorts: {"8080/tcp": {}},
    Labels: {"org.opencontainers.image.title": "cntnr hello"}
  },
  rootfs: {type: "layers", diff_ids: [$diff]},
  history: [{created: "1970-01-01T00:00:00Z", created_by: "examples/hello/build-image.sh"}]
}' >"$WORK/config.json"
CONFIG_SIZE=$(size "$WORK/config.json")
CONFIG=$(add_blob "$WORK/config.json")

jq -cn --arg config "sha256:$CONFIG" --argjson config_size "$CONFIG_SIZE" \
  --arg layer "sha256:$LAYER" --argjson layer_size "$LAYER_SIZE" '{
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $config, size: $config_size},
  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $layer, size: $layer_size}]
}' >"$WORK/manifest.json"
MANIFEST_SIZE=$(size "$WORK/manifest.json")
MANIFEST=$(add_blob "$WORK/manifest.json")

# --- the layout --------------------------------------------------------------
printf '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"
jq -cn --arg manifest "sha256:$MANIFEST" --argjson size "$MANIFEST_SIZE" \
  --arg arch "$ARCH" --arg tag "$TAG" '{
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.index.v1+json",
  manifests: [{
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    digest: $manifest,
    size: $size,
    platform: {architecture: $arch, os: "linux"},
    annotations: {"org.opencontainers.image.ref.name": $tag}
  }]
}' >"$LAYOUT/index.json"

# Replace the previous image only once the new one is complete.
mkdir -p "$(dirname "$OUT")"
rm -rf "$OUT.old"
[[ -e $OUT ]] && mv "$OUT" "$OUT.old"
mv "$LAYOUT" "$OUT"
rm -rf "$OUT.old"
printf '%s:%s sha256:%s\n' "$OUT" "$TAG" "$MANIFEST"
