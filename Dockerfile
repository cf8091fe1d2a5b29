# walcake: one static, pure-Go binary (cgo is needed only by tests, for DuckDB).
#
#   docker build -t walcake --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg COMMIT=$(git rev-parse HEAD) .
#   docker run --rm -e PG_CONN_STRING=... -e WALCAKE_DEST=s3://bucket/prefix \
#     -v walcake-spool:/var/lib/walcake/spool walcake        # runs `walcake run`
#
# No HEALTHCHECK: walcake is a batch job (cron, ECS scheduled task, Kubernetes
# CronJob) that runs, exits, and whose exit code is its health; a HEALTHCHECK
# probes a long-running server and would only mark a finished run unhealthy.
# For monitoring, schedule `walcake status --check` or scrape the metrics
# (docs/operations.md). `capture --follow` serves /healthz with --metrics-addr
# for a liveness probe.
#
# Base images are pinned by exact tag. The distroless image has no versioned
# tags (its :nonroot tag follows Debian security updates); to pin it by digest,
# resolve one with `docker buildx imagetools inspect
# gcr.io/distroless/static-debian12:nonroot` and write it as
# gcr.io/distroless/static-debian12:nonroot@sha256:<digest>.

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
# Dependencies get their own layer, rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=none
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/walcake ./cmd/walcake \
 && mkdir -p /out/state/spool

# distroless/static: CA certificates, tzdata and the nonroot user (65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/walcake /walcake
# The state directory is created here, owned by nonroot, so that the spool is
# writable with or without a volume on it (a new named volume takes this owner).
COPY --from=build --chown=65532:65532 /out/state /var/lib/walcake
USER nonroot:nonroot
WORKDIR /var/lib/walcake
ENV SPOOL_DIR=/var/lib/walcake/spool
# SIGTERM (the default stop signal) stops walcake within
# WALCAKE_SHUTDOWN_TIMEOUT (20 s), inside the 30 s ECS and Kubernetes wait
# before SIGKILL (`docker stop` waits 10 s unless given -t 30; a SIGKILL loses
# nothing either, the next run resumes from the slot).
ENTRYPOINT ["/walcake"]
CMD ["run"]
