#!/usr/bin/env bash
# Build the serving image from the Dockerfile, with the provenance build arguments filled in.
#
#   docker/build-image.sh [-t TAG] [--context DIR] [--bundle DIR] [-- EXTRA DOCKER BUILD ARGS...]
#
# Reads from the context's dvc.lock the md5 of models/model.txt (label org.tabml.model.md5;
# the build checks it, and every artifact, against dvc.lock), derives the model version (the
# first 12 hex digits of that md5, as the service reports it, unless MODEL_VERSION is set), and
# asks git for the commit and whether the tree is dirty. Users, CI and tests all build this way.
#
#   -t TAG          image tag, may be repeated (default: tabml-serve:<model version> and
#                   tabml-serve:latest)
#   --context DIR   build context holding the Dockerfile (default: this repository)
#   --bundle DIR    bake this bundle (tabml-registry export) instead of the context's models/:
#                   staged as <context>/docker/.bundle for the build, every file verified by
#                   the build, served as TABML_BUNDLE=/app/bundle with its route; the labels
#                   name its champion (model md5, version id)
#
# Environment:
#   TABML_BASE_IMAGE  base image, passed as the build argument BASE_IMAGE (default
#                   python:3.11-slim; where no registry is reachable, the local stand-in
#                   made by .ci/build-standin-base.sh: localhost/tabml-python-standin:3.11-slim)
#   MODEL_VERSION   model version for the labels and the service (default: md5 prefix)
#   PIP_INDEX_URL, HTTP(S)_PROXY, NO_PROXY   passed on to the build when set
#   DOCKER          docker CLI (default /usr/bin/docker if present, else docker on PATH)
#   DOCKER_BUILDKIT 1 for BuildKit, 0 for the classic builder; when unset, BuildKit if the
#                   CLI can use it (buildx, or a CLI before 23.0), else the classic builder
set -euo pipefail

die() { printf '[build-image] ERROR: %s\n' "$*" >&2; exit 1; }

CONTEXT=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE=""
TAGS=()
while (($#)); do
    case $1 in
        -t | --tag)
            (($# >= 2)) || die "$1 needs a value"
            TAGS+=("$2")
            shift
            ;;
        --context)
            (($# >= 2)) || die "$1 needs a value"
            CONTEXT=$(cd "$2" && pwd)
            shift
            ;;
        --bundle)
            (($# >= 2)) || die "$1 needs a value"
            BUNDLE=$2
            shift
            ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
            exit 0
            ;;
        --)
            shift
            break
            ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

if [[ -z ${DOCKER:-} ]]; then
    if [[ -x /usr/bin/docker ]]; then
        DOCKER=/usr/bin/docker
    else
        DOCKER=$(command -v docker) || die "no docker CLI found (.ci/engine.sh start installs one)"
    fi
fi
# BuildKit when the CLI can drive it: through buildx, or built in (CLIs before 23.0, such as
# Debian's docker.io 20.10). Its cache lives outside the image list and is garbage-collected;
# the classic builder keeps every intermediate step as an untagged image.
if [[ -z ${DOCKER_BUILDKIT:-} ]]; then
    client=$("$DOCKER" version --format '{{.Client.Version}}' 2>/dev/null || true)
    if "$DOCKER" buildx version >/dev/null 2>&1 || [[ ${client%%.*} =~ ^(1[0-9]|2[0-2])$ ]]; then
        export DOCKER_BUILDKIT=1
    else
        export DOCKER_BUILDKIT=0
    fi
fi

[[ -f $CONTEXT/Dockerfile ]] || die "no Dockerfile in $CONTEXT"
LOCK=$CONTEXT/dvc.lock
[[ -f $LOCK ]] || die "$LOCK is missing: run \`python src/train.py\` (it writes dvc.lock) first"

# md5 of models/model.txt among the outputs of dvc.lock (DVC writes `- path:` then `md5:`).
MODEL_MD5=$(awk '
    /^ *outs:/ { outs = 1; next }
    /^ *(deps|params|cmd):/ { outs = 0 }
    outs && /^ *- path: models\/model\.txt *$/ { found = 1; next }
    found && /^ *- path:/ { found = 0 }
    found && /^ *md5: *[0-9a-f]+ *$/ { print $2; exit }
' "$LOCK")
[[ $MODEL_MD5 =~ ^[0-9a-f]{32}$ ]] ||
    die "dvc.lock records no md5 for models/model.txt: run \`python src/train.py\` first"
bundle_args=()
if [[ -n $BUNDLE ]]; then
    [[ -f $BUNDLE/bundle.json ]] || die "$BUNDLE is not a bundle (no bundle.json); write one with \`tabml-registry export\`"
    # The champion's id and model md5, for the labels (the build checks the md5 against the
    # bundle's files).
    read -r champion MODEL_MD5 < <(python3 - "$BUNDLE" <<'PY'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
champion = json.loads((root / "bundle.json").read_text())["champion"]
print(champion, json.loads((root / champion / "provenance.json").read_text())["model_md5"])
PY
    ) || die "cannot read the champion of $BUNDLE"
    MODEL_VERSION=${MODEL_VERSION:-$champion}
    staged=$CONTEXT/docker/.bundle
    rm -rf "$staged"
    trap 'rm -rf "$staged"' EXIT
    cp -rL "$BUNDLE/." "$staged"  # a published bundle is a symlink to its generation
    bundle_args=(--build-arg "BUNDLE_DIR=docker/.bundle" --build-arg "SERVE_BUNDLE=/app/bundle"
        --build-arg "SERVE_MODEL_VERSION=")
fi
MODEL_VERSION=${MODEL_VERSION:-${MODEL_MD5:0:12}}

GIT_COMMIT=""
GIT_DIRTY=""
if GIT_COMMIT=$(git -C "$CONTEXT" rev-parse --verify --quiet HEAD 2>/dev/null); then
    if [[ -n $(git -C "$CONTEXT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
        GIT_DIRTY=true
    else
        GIT_DIRTY=false
    fi
else
    GIT_COMMIT=""
fi

# TABML_-prefixed so that a BASE_IMAGE left in the environment by some other tool is not
# picked up by accident.
BASE_IMAGE=${TABML_BASE_IMAGE:-python:3.11-slim}
# Passed on from the environment when set: a PyPI mirror and the proxies (Docker keeps the
# proxy variables out of the image's history).
passthrough=()
for name in PIP_INDEX_URL HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
    if [[ -n ${!name:-} ]]; then
        passthrough+=(--build-arg "$name")
    fi
done
((${#TAGS[@]})) || TAGS=("tabml-serve:$MODEL_VERSION" "tabml-serve:latest")
tag_args=()
for tag in "${TAGS[@]}"; do
    tag_args+=(--tag "$tag")
done

printf '[build-image] base %s, model md5 %s, version %s, commit %s%s%s (DOCKER_BUILDKIT=%s)\n' \
    "$BASE_IMAGE" "$MODEL_MD5" "$MODEL_VERSION" "${GIT_COMMIT:-unknown}" \
    "$([[ $GIT_DIRTY == true ]] && echo ' (dirty)')" "${BUNDLE:+, bundle $BUNDLE}" "$DOCKER_BUILDKIT"

"$DOCKER" build \
    --file "$CONTEXT/Dockerfile" \
    --force-rm \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "MODEL_MD5=$MODEL_MD5" \
    --build-arg "MODEL_VERSION=$MODEL_VERSION" \
    --build-arg "GIT_COMMIT=$GIT_COMMIT" \
    --build-arg "GIT_DIRTY=$GIT_DIRTY" \
    "${passthrough[@]}" \
    "${bundle_args[@]}" \
    "${tag_args[@]}" \
    "$@" \
    "$CONTEXT"

printf '[build-image] built %s\n' "${TAGS[*]}"
