# Build: docker build --build-arg VERSION=$(git describe --tags --always) -t reboot-manager .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/reboot-manager ./cmd/reboot-manager

# Static binary on distroless: no shell, no package manager, runs as nonroot (65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/reboot-manager /reboot-manager
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/reboot-manager"]
