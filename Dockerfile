# base-operator image: the operator, and the Quasar agent it injects into every Base pod.
#   docker build -t REGISTRY/base-operator:TAG .                 (release build inside the image)
#   docker build --target store -t REGISTRY/base-store:TAG .     (the reference Base store as a Base image)
# Without a registry (scripts/cluster.sh does this): BuildKit (DOCKER_BUILDKIT=1 on Docker 20.10), a runtime
# base the machine makes itself, and a binary built outside, in a context directory CTX holding only it:
#   docker build --build-arg RUNTIME=base-runtime:local --build-arg BINARY=prebuilt -f Dockerfile CTX
ARG RUNTIME=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY=build

FROM rust:1.95-bookworm AS build
WORKDIR /src
# bindgen (rusqlite's `session` feature, for the reference store) needs libclang.
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p base-adapter-k8s && cp target/release/base-operator /base-operator

# A binary built outside the image (BINARY=prebuilt; only BuildKit skips the stage it does not use).
FROM scratch AS prebuilt
COPY base-operator /base-operator

FROM ${BINARY} AS binary

# The reference Base store as a Base image (`docker build --target store`): `base-operator store`
# with no arguments takes its port from BASE_PORT and keeps its data on the pod's volume.
FROM ${RUNTIME} AS store
COPY --from=binary /base-operator /usr/local/bin/base-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/base-operator", "store"]

FROM ${RUNTIME}
COPY --from=binary /base-operator /usr/local/bin/base-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/base-operator"]
