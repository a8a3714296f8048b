#!/usr/bin/env bash
# Make the Dockerfile's base image (python:3.11-slim) from Debian's own packages, for a machine
# that reaches a Debian mirror and PyPI but no image registry.
#
#   sudo deploy/docker/local-base-image.sh [TAG]     # default TAG: python:3.11-slim
#
# debootstrap builds a minimal bookworm root (Python 3.11 from Debian, venv, CA certificates),
# `python` is linked to python3 as in the official image, the host's CA bundle is copied in (so
# pip inside the build trusts the same TLS proxies the host does), and `docker import` loads it.
set -euo pipefail

tag="${1:-python:3.11-slim}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
root="$(mktemp -d /tmp/sw-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >/dev/null
ln -sf python3 "$root/usr/bin/python"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' - "$tag"
echo "imported $tag"
