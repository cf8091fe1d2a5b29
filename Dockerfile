# walcake: one static, pure-Go binary (cgo is needed only by tests, for DuckDB).
#
#   docker build -t walcake .
#   docker run --rm -e PG_CONN_STRING=... -e WALCAKE_DEST=s3://bucket/prefix \
#     -v walcake-spool:/var/lib/walcake/spool walcake        # runs `walcake run`
#
# No HEALTHCHECK: walcake is a batch job (cron, scheduled task, CronJob) whose
# exit code is its health; `walcake status` reports slot lag for monitoring.

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
# Dependencies get their own layer, rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/walcake ./cmd/walcake \
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
ENTRYPOINT ["/walcake"]
CMD ["run"]
