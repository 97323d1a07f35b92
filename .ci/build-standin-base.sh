#!/usr/bin/env bash
# Build a local stand-in for the `python:3.11-slim` base image, under its own name.
#
# For air-gapped builds: where no image registry is reachable, `FROM
# python:3.11-slim` cannot be pulled, but the Debian package mirror that apt
# already uses usually is.  This script debootstraps a minimal Debian bookworm
# (whose python3 is 3.11) from that mirror and imports it into the local Docker
# engine as TAG; build on it with TABML_BASE_IMAGE=TAG docker/build-image.sh.
#
#   .ci/build-standin-base.sh [--rebuild] [TAG]
#       (TAG default: localhost/tabml-python-standin:3.11-slim)
#
# Why not the official tag: an image named python:3.11-slim that is not the
# official one would be mistaken for it (by people, by `docker history`, by the
# image's base-name label).  The `localhost/` prefix means that a missing
# stand-in is never pulled from a public registry under a look-alike name.
# Official names (python:*, library/python:*) are refused.
#
# Caching: if TAG already exists in the engine nothing is done.  The root file
# system tarball is also kept in $STANDIN_CACHE_DIR (default
# /var/cache/tabml-standin-base), so after the engine's data is wiped the image
# is re-imported in seconds.  --rebuild ignores both caches.
#
# What the stand-in contains, and how it differs from the official image:
#   * Debian's python3 (3.11, /usr/bin/python3), python3-venv, python3-pip,
#     ca-certificates; no `python` command, pip is /usr/bin/pip.
#   * The EXTERNALLY-MANAGED marker is removed, so `pip install` into the
#     system interpreter works as it does in the official image.
#   * apt sources point at the same Debian mirror(s) as this host, read at run
#     time from /etc/apt; apt proxy/auth settings of the host are copied in.
#   * Extra CA certificates of this host (/usr/local/share/ca-certificates) are
#     installed, so pip and apt work through an intercepting proxy during the
#     build.  They live only in this local image and its cache: never in the
#     repository, and never in an image built on the official base.
#
# Environment overrides: STANDIN_SUITE (bookworm), STANDIN_MIRROR,
# STANDIN_SECURITY_MIRROR, STANDIN_CACHE_DIR, DOCKER (CLI path).
# Needs root and a running engine (.ci/engine.sh start).
set -euo pipefail

RECIPE_VERSION=1
SUITE=${STANDIN_SUITE:-bookworm}
PACKAGES=python3,python3-venv,python3-pip,ca-certificates
CACHE_DIR=${STANDIN_CACHE_DIR:-/var/cache/tabml-standin-base}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '[standin] %s\n' "$*"; }
die() { printf '[standin] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

REBUILD=0
TAG=""
while (($#)); do
    case $1 in
        --rebuild) REBUILD=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*) die "unknown option: $1 (see --help)" ;;
        *)
            [[ -z $TAG ]] || die "only one TAG may be given"
            TAG=$1
            ;;
    esac
    shift
done
TAG=${TAG:-localhost/tabml-python-standin:3.11-slim}
[[ ! $TAG =~ ^(docker\.io/)?(library/)?python(:|@|$) ]] ||
    die "$TAG is the official image's name; give the stand-in its own (default: localhost/tabml-python-standin:3.11-slim)"

if [[ -n ${DOCKER:-} ]]; then
    :
elif [[ -x /usr/bin/docker ]]; then
    DOCKER=/usr/bin/docker
else
    DOCKER=$(command -v docker) || die "no docker CLI found; run .ci/engine.sh start"
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap and chroot need it)"
timeout 20 "$DOCKER" info >/dev/null 2>&1 ||
    die "no Docker engine answers; start one with .ci/engine.sh start"

if ((!REBUILD)) && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    log "image $TAG already present; nothing to do (use --rebuild to force)"
    exit 0
fi

# --- apt configuration of this host ------------------------------------------

# Print "URI SUITE" for every enabled deb source of this host (deb822 .sources
# files and one-line .list files).
host_deb_sources() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"; key = ""
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^#/) continue
                    if (line ~ /^[ \t]/) { val = line } else {
                        key = tolower(substr(line, 1, index(line, ":") - 1))
                        val = substr(line, index(line, ":") + 1)
                    }
                    if (key == "types") types = types " " val
                    else if (key == "uris") uris = uris " " val
                    else if (key == "suites") suites = suites " " val
                    else if (key == "enabled") enabled = val
                }
                gsub(/[ \t]/, "", enabled)
                if (tolower(enabled) == "no") next
                if (types !~ /(^|[ \t])deb([ \t]|$)/) next
                nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
                for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++)
                    if (u[a] != "" && s[b] != "") print u[a], s[b]
            }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk '$1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if (i + 1 <= NF) print $i, $(i + 1)
            }' "$f"
    done
}

# First URI serving the given suite.
uri_for_suite() {
    awk -v s="$1" '$2 == s { print $1; exit }' <<<"$HOST_SOURCES"
}

HOST_SOURCES=$(host_deb_sources | sed 's#/*[[:space:]]# #')
MIRROR=${STANDIN_MIRROR:-$(uri_for_suite "$SUITE")}
SECURITY_MIRROR=${STANDIN_SECURITY_MIRROR:-$(uri_for_suite "$SUITE-security")}
UPDATES_MIRROR=$(uri_for_suite "$SUITE-updates")
if [[ -n ${STANDIN_MIRROR:-} && -n $UPDATES_MIRROR ]]; then
    UPDATES_MIRROR=$STANDIN_MIRROR
fi
[[ -n $MIRROR ]] ||
    die "no apt source for suite '$SUITE' found in /etc/apt; set STANDIN_MIRROR=<debian mirror URL>"

# apt.conf.d snippets that matter for reaching the mirror: proxies,
# credentials, TLS settings and validity checks (snapshot mirrors).
host_apt_conf_files() {
    local f
    for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
        [[ -f $f ]] || continue
        if grep -qiE 'proxy|auth|Check-Valid-Until|Check-Date|Verify-Peer|Verify-Host|CaInfo|SslCert|SslKey' "$f"; then
            echo "$f"
        fi
    done
}
mapfile -t APT_CONF_FILES < <(host_apt_conf_files)
mapfile -t AUTH_FILES < <(find /etc/apt/auth.conf /etc/apt/auth.conf.d -maxdepth 1 -type f 2>/dev/null | sort)
mapfile -t CA_FILES < <(find /usr/local/share/ca-certificates -type f -name '*.crt' 2>/dev/null | sort)

# The tarball depends on the recipe, the mirrors and the copied host files.
cache_key() {
    {
        echo "recipe=$RECIPE_VERSION suite=$SUITE packages=$PACKAGES"
        echo "mirror=$MIRROR updates=$UPDATES_MIRROR security=$SECURITY_MIRROR"
        local f
        for f in "${APT_CONF_FILES[@]}" "${AUTH_FILES[@]}" "${CA_FILES[@]}"; do
            [[ -n $f ]] && sha256sum "$f"
        done
        true
    } | sha256sum | cut -c1-16
}
KEY=$(cache_key)
TARBALL=$CACHE_DIR/standin-$SUITE-$(dpkg --print-architecture)-$KEY.tar

mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.lock"
flock 9

# --- building the root file system ------------------------------------------

WORKDIR=""
cleanup() {
    [[ -n $WORKDIR && -d $WORKDIR ]] || return 0
    # A failed debootstrap can leave proc/sys/dev mounted inside the rootfs.
    local mnt
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v root="$WORKDIR/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$WORKDIR"
}
trap cleanup EXIT

write_sources() {
    local rootfs=$1 out
    out=$rootfs/etc/apt/sources.list.d/debian.sources
    rm -f "$rootfs/etc/apt/sources.list"
    mkdir -p "$(dirname "$out")"
    {
        printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
            "$MIRROR" "$SUITE" "$KEYRING"
        if [[ -n $UPDATES_MIRROR ]]; then
            printf '\nTypes: deb\nURIs: %s\nSuites: %s-updates\nComponents: main\nSigned-By: %s\n' \
                "$UPDATES_MIRROR" "$SUITE" "$KEYRING"
        fi
        if [[ -n $SECURITY_MIRROR ]]; then
            printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
                "$SECURITY_MIRROR" "$SUITE" "$KEYRING"
        fi
    } >"$out"
}

configure_rootfs() {
    local rootfs=$1 f
    write_sources "$rootfs"

    # apt settings that reach the mirror, as on this host.
    for f in "${APT_CONF_FILES[@]}"; do
        [[ -n $f ]] || continue
        if [[ $f == /etc/apt/apt.conf ]]; then
            cp "$f" "$rootfs/etc/apt/apt.conf"
        else
            cp "$f" "$rootfs/etc/apt/apt.conf.d/"
        fi
    done
    for f in "${AUTH_FILES[@]}"; do
        [[ -n $f ]] || continue
        mkdir -p "$rootfs$(dirname "$f")"
        install -m 600 "$f" "$rootfs$f"
    done

    # Container-friendly apt defaults, as in Debian's official images.
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
    echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
    echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"

    # Extra CA certificates of this host (e.g. an intercepting proxy's).
    if ((${#CA_FILES[@]})); then
        mkdir -p "$rootfs/usr/local/share/ca-certificates"
        cp -a /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/"
        log "added ${#CA_FILES[@]} extra CA certificate(s) from /usr/local/share/ca-certificates"
    fi
    # (openssl rehash warns about the bundle file itself; only failures matter)
    if ! chroot "$rootfs" /usr/sbin/update-ca-certificates --fresh >"$WORKDIR/update-ca.log" 2>&1; then
        cat "$WORKDIR/update-ca.log" >&2
        die "update-ca-certificates failed in the stand-in"
    fi

    # Behave like the official image: pip may install into the system Python.
    rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED

    # Files Docker provides at run time, and caches not worth shipping.
    : >"$rootfs/etc/resolv.conf"
    rm -f "$rootfs/etc/hostname"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/debconf/*-old \
        "$rootfs"/var/lib/dpkg/*-old "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    find "$rootfs/usr/lib" -name __pycache__ -type d -prune -exec rm -rf {} +
}

build_tarball() {
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap (apt-get) ..."
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap debian-archive-keyring
    fi
    [[ -r $KEYRING ]] || die "$KEYRING missing; apt-get install debian-archive-keyring"

    # debootstrap uses wget, which reads the proxy from the environment only.
    if [[ -z ${http_proxy:-} ]]; then
        local apt_proxy=""
        eval "$(apt-config shell apt_proxy Acquire::http::Proxy)"
        if [[ -n $apt_proxy && $apt_proxy != DIRECT ]]; then
            export http_proxy=$apt_proxy
        fi
    fi

    WORKDIR=$(mktemp -d /var/tmp/standin-build.XXXXXX)
    local rootfs=$WORKDIR/rootfs debootstrap_log=$CACHE_DIR/debootstrap.log
    log "debootstrap --variant=minbase $SUITE from $MIRROR (log: $debootstrap_log) ..."
    if ! debootstrap --variant=minbase --components=main --keyring="$KEYRING" \
        --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$debootstrap_log" 2>&1; then
        tail -n 30 "$debootstrap_log" >&2
        [[ -f $rootfs/debootstrap/debootstrap.log ]] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    configure_rootfs "$rootfs"

    rm -f "$CACHE_DIR"/standin-"$SUITE"-*.tar "$CACHE_DIR"/*.tar.partial
    # May hold apt credentials and CA certificates of this host: root only.
    (umask 077 && tar -C "$rootfs" --numeric-owner -cf "$TARBALL.partial" .)
    mv "$TARBALL.partial" "$TARBALL"
    log "cached root file system: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
    cleanup
    WORKDIR=""
}

# --- main ----------------------------------------------------------------------

if ((REBUILD)) || [[ ! -f $TARBALL ]]; then
    build_tarball
else
    log "using cached root file system $TARBALL"
fi

old_id=$("$DOCKER" image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
log "importing as $TAG ..."
"$DOCKER" import \
    --change "ENV PATH=$IMAGE_PATH" \
    --change "ENV LANG=C.UTF-8" \
    --change 'CMD ["python3"]' \
    --change "LABEL org.tabml.standin-base=$SUITE-$KEY" \
    --message "local stand-in for $TAG: Debian $SUITE minbase + python3" \
    "$TARBALL" "$TAG" >/dev/null

version=$("$DOCKER" run --rm --network none "$TAG" python3 -c 'import ssl, venv, sys; print(sys.version.split()[0])') ||
    die "sanity check of $TAG failed"
new_id=$("$DOCKER" image inspect --format '{{.Id}}' "$TAG")
if [[ -n $old_id && $old_id != "$new_id" ]]; then
    # The replaced image is untagged now; drop it unless something still uses it.
    "$DOCKER" image rm "$old_id" >/dev/null 2>&1 || true
fi
size=$("$DOCKER" image inspect --format '{{.Size}}' "$TAG")
log "done: $TAG (Python $version, $((size / 1024 / 1024)) MiB)"
