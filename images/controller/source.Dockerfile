# The emu controller image as docker compose builds it (the `build:` of every
# docker-compose.yml): from the repository checkout, with no Python package
# index. `emu images build` makes the same image from images/controller/Dockerfile
# with wheels the host's pip fetched; compose cannot run a step on the host, and
# a container may not reach PyPI (on emu's own machine it does not), so here
# emu's dependencies come from Debian's packages, which every Debian mirror
# serves over plain HTTP.
#
# Measured there: a container reaches deb.debian.org over HTTP, while HTTPS to
# pypi.org fails certificate verification (the machine's egress proxy), so pip
# cannot fetch anything inside a build.
#
# Debian 13 (trixie) has them all at versions emu needs (pydantic 2.10,
# docker 7.1, rich 13.9, dnslib 0.9.25, cryptography 43, jsonpatch 1.32);
# Debian 12 (bookworm) has pydantic 1 and docker 5, too old. fabric is 2.6 in
# trixie: emu.control.hosts uses only Connection(..., connect_timeout,
# connect_kwargs), .client, .open() and .run(hide, warn, in_stream, timeout),
# all in fabric 2.6, so the pin (>=3) is not enforced here (--no-deps).
#
# BASE_IMAGE: debian:trixie-slim where a registry is reachable (the default);
# where none is, any local Debian 12 or 13 image, e.g. emu/debian:bookworm-slim
# that `emu up` or `emu images build` makes with mmdebstrap on the first node
# image build when debian:bookworm-slim cannot be pulled (make up does that):
#   EMU_BASE_IMAGE=emu/debian:bookworm-slim docker compose up
# A bookworm base is upgraded to trixie first. On the project machine (no
# registry, a near Debian mirror) the whole build from emu/debian:bookworm-slim
# took 41 s without cache; with Docker's build cache, a change to emu's code
# rebuilds only the last two steps (a few seconds).
ARG BASE_IMAGE=debian:trixie-slim
FROM ${BASE_IMAGE}
RUN set -e; . /etc/os-release; \
    if [ "$VERSION_CODENAME" != trixie ]; then \
      rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; \
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie trixie-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: trixie-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        > /etc/apt/sources.list.d/debian.sources; \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::=--force-confnew dist-upgrade; \
    else \
      apt-get update; \
    fi; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-pip python3-setuptools python3-wheel \
      python3-docker python3-yaml python3-pydantic python3-rich python3-dnslib python3-fabric \
      python3-cryptography python3-jsonpatch ca-certificates; \
    rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY emu /src/emu
# Debian's packages are the dependencies; pip only installs emu itself, from the checkout.
RUN pip install --no-deps --no-index --no-build-isolation --no-cache-dir --break-system-packages --root-user-action=ignore /src \
 && rm -rf /src \
 && python3 -c "import emu.cli, emu.control.cluster, emu.control.hosts"
COPY images /opt/emu/images
ENV EMU_IMAGES_DIR=/opt/emu/images
LABEL io.emu.image=controller
ENTRYPOINT ["emu"]
CMD ["--help"]
