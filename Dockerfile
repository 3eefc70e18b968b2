# The same image `make image` builds without a daemon (hack/image.sh): the static binary
# and Debian's CA bundle FROM scratch, run as 65532:65532, nothing else.
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=$(sed -n 's/^appVersion: *//p' charts/reboot-manager/Chart.yaml) \
#     -t ghcr.io/reboot-manager/reboot-manager:v0.1.0 .
# The entrypoint is the binary: the manifests' args start with `serve` (the server);
# without arguments it prints its usage, and `--version` or `version` print the version.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG TARGETOS=linux
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION}" -o /out/reboot-manager ./cmd/reboot-manager

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/reboot-manager /reboot-manager
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/reboot-manager"]
