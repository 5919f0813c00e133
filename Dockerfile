# ringrift-remediator image: `remediator serve` (the receiver) and `remediator worker` (the ladder).
# `make image` builds it and `make test` (CI) runs it as the Helm chart does: docs/deploy.md.
#
#   docker build -t ringrift-remediator:0.2.0 .
#   docker run --rm ringrift-remediator:0.2.0 --help

# --- build: a wheel from the source tree ------------------------------------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- runtime ------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ssh and rsync: the worker reaches hosts and recovers /data/selfplay with them.
# apt-get clean: on a base without the official images' docker-clean hook, the downloaded .debs and
# apt's package caches (~80 MB) would otherwise stay in this layer.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client rsync \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# A fixed, non-root user (the Helm chart runs as 10001 and mounts an emptyDir on the home folder,
# where ssh may write under a read-only root filesystem).
RUN groupadd --system --gid 10001 remediator \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/remediator --create-home \
       --shell /usr/sbin/nologin remediator

COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels

USER 10001:10001
WORKDIR /home/remediator
EXPOSE 8080
ENTRYPOINT ["remediator"]
CMD ["serve"]
