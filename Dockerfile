# The prediction service with the model locked in dvc.lock, or a bundle of model versions.
#
#   docker/build-image.sh                      # computes the build arguments, then builds
#   docker/build-image.sh --bundle DIR         # bakes a bundle (champion, challenger, route)
#   docker run --rm -p 127.0.0.1:8000:8000 tabml-serve:<model version>
#
# Two stages on the same base: `build` makes a virtual environment from the hash-pinned
# requirements/serve.lock (only what serving imports), installs the project, and checks that the
# model artifacts' md5 equal dvc.lock's; `runtime` receives the environment and the checked
# files, nothing else. BASE_IMAGE may be a local stand-in where no registry is reachable
# (.ci/build-standin-base.sh; TABML_BASE_IMAGE=<its name> docker/build-image.sh); only its
# `python3` is used.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore

# A PyPI mirror where the public index is out of reach (the hashes are checked either way).
ARG PIP_INDEX_URL
RUN python3 -m venv /opt/venv

# Dependencies first: this layer is rebuilt only when a lock file changes.
COPY requirements/serve.lock docker/build-requirements.txt /tmp/requirements/
RUN /opt/venv/bin/pip install --require-hashes --only-binary=:all: \
        -r /tmp/requirements/serve.lock -r /tmp/requirements/build-requirements.txt

# The project itself (its dependencies are the lock above), then drop what only installing
# needed and the bundled test suites (mostly numpy's and scipy's: about 48 MB).
COPY pyproject.toml README.md /tmp/project/
COPY src/tabml/ /tmp/project/src/tabml/
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation /tmp/project \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes setuptools pip \
    && find /opt/venv -depth -type d -name tests -exec rm -rf {} +

# The model: copy what the build context has, refuse it unless every md5 equals dvc.lock's,
# and pass on only the verified files (to /app, the service's working directory). With a
# bundle (BUNDLE_DIR, staged by build-image.sh --bundle), the bundle instead: every file checked
# along its md5 chain, the champion's model md5 against MODEL_MD5, copied to /app/bundle.
ARG MODEL_MD5=""
ARG BUNDLE_DIR=docker/no-bundle
COPY dvc.lock /tmp/context/dvc.lock
COPY models/ /tmp/context/models/
COPY reports/metrics.json /tmp/context/reports/metrics.json
COPY ${BUNDLE_DIR}/ /tmp/context/bundle/
COPY docker/verify_artifacts.py /tmp/verify_artifacts.py
RUN if [ -f /tmp/context/bundle/bundle.json ]; then \
        mkdir -p /app \
        && /opt/venv/bin/python -m tabml.bundle_check /tmp/context/bundle \
            --model-md5 "${MODEL_MD5}" --copy-to /app/bundle; \
    else \
        /opt/venv/bin/python /tmp/verify_artifacts.py --root /tmp/context --copy-to /app \
            --model-md5 "${MODEL_MD5}" \
            models/contract.json models/feature_transform.json models/model.txt \
            models/model_metadata.json models/reference_profile.json \
            models/model_card.md models/model_card.html reports/metrics.json; \
    fi


FROM ${BASE_IMAGE} AS runtime

# LightGBM needs the OpenMP runtime (libgomp.so.1). The service runs as an unprivileged user.
# Versions come from the base image's Debian release; pinning exact Debian revisions would
# break the build whenever the archive publishes a security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
    && groupadd --system --gid 10001 tabml \
    && useradd --no-log-init --uid 10001 --gid tabml --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin tabml

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app

WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TABML_MODEL_DIR=/app/models \
    TABML_DVC_LOCK=/app/dvc.lock \
    TABML_METRICS_FILE=/app/reports/metrics.json \
    TABML_PORT=8000 \
    TABML_WORKERS=1

# Fail the build, not the first start, if a library is missing (e.g. libgomp for LightGBM).
RUN ["python3", "-c", "import lightgbm, tabml.serving.app"]

USER 10001:10001
EXPOSE 8000

# Healthy once the model is loaded and a warm-up prediction succeeded (/ready answers 200).
# No curl in a slim image: the interpreter already there does the request.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('TABML_PORT', '8000'), timeout=2)"]

# exec: the server is PID 1 and receives `docker stop`'s SIGTERM.
CMD ["/bin/sh", "-c", "exec tabml-serve --host 0.0.0.0 --port \"${TABML_PORT}\" --workers \"${TABML_WORKERS}\""]

# Provenance (last, so changing it rebuilds no layer). docker/build-image.sh fills these in.
ARG BASE_IMAGE
ARG GIT_COMMIT=""
ARG GIT_DIRTY=""
ARG MODEL_MD5=""
ARG MODEL_VERSION=""
# With a baked bundle: /app/bundle, and no version override (the bundle names its versions).
ARG SERVE_BUNDLE=""
ARG SERVE_MODEL_VERSION=${MODEL_VERSION}
ENV TABML_GIT_COMMIT=${GIT_COMMIT} \
    TABML_MODEL_VERSION=${SERVE_MODEL_VERSION} \
    TABML_BUNDLE=${SERVE_BUNDLE}
LABEL org.opencontainers.image.title="tabml prediction service" \
      org.opencontainers.image.description="FastAPI service for the LightGBM model locked in dvc.lock (model md5 ${MODEL_MD5})" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${MODEL_VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.tabml.model.md5="${MODEL_MD5}" \
      org.tabml.model.version="${MODEL_VERSION}" \
      org.tabml.git.dirty="${GIT_DIRTY}"
