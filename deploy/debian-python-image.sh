#!/usr/bin/env bash
# Builds a Python base image from Debian packages, for hosts that reach a Debian mirror and PyPI
# but no container registry (deploy/README.md, "Building without a registry"):
#
#   deploy/debian-python-image.sh [IMAGE]        # default localhost/debian-python:3.11-bookworm
#   podman build --format docker --build-arg PYTHON_IMAGE=localhost/debian-python:3.11-bookworm .
#
# It stands in for python:3.11-slim-bookworm: Debian 12's python3 (3.11, `python` on PATH),
# python3-venv and ca-certificates on a minbase debootstrap (about 130 MB). Needs root,
# debootstrap and podman. The mirror is the one apt uses here (DEBIAN_MIRROR overrides it).
set -euo pipefail

image="${1:-localhost/debian-python:3.11-bookworm}"
suite=bookworm
packages=python3,python3-venv,python-is-python3,ca-certificates

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    mirror="$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null \
        | awk -v suite="$suite" '$2 == suite { print $1; exit }')"
fi
mirror="${mirror:-http://deb.debian.org/debian/}"

rootfs="$(mktemp -d)"
# --one-file-system: never follow a mount debootstrap may have left behind (e.g. proc).
trap 'rm -rf --one-file-system "$rootfs"' EXIT

debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >&2
# Everything below deletes under $rootfs: make sure it is the new tree.
test -x "$rootfs/usr/bin/python3"

# Trust what this host trusts: downloads during image builds (pip, apt over HTTPS) may pass
# through a TLS-inspecting proxy whose CA only the host's local store holds.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
fi
chroot "$rootfs" update-ca-certificates >&2
# pip verifies with its own bundled CA list unless told to use the system store.
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
# As in Debian's slim images: no manuals, docs (copyright files stay) or translations, neither
# now nor from packages installed on top later.
printf '%s\n' \
    'path-exclude /usr/share/doc/*' \
    'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' \
    'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' \
    'path-include /usr/share/locale/locale.alias' \
    >"$rootfs/etc/dpkg/dpkg.cfg.d/slim"
find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*

# An imported image has no environment: give it what the python images set.
tar -C "$rootfs" --numeric-owner -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$image" >&2
echo "$image"
