# base-operator image: the operator, and the Quasar agent it injects into every Base pod.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# bindgen (rusqlite's `session` feature, for the reference store) needs libclang.
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p base-adapter-k8s && cp target/release/base-operator /base-operator

# The reference Base store as a Base image (`docker build --target store`): `base-operator store`
# with no arguments takes its port from BASE_PORT and keeps its data on the pod's volume.
FROM gcr.io/distroless/cc-debian12:nonroot AS store
COPY --from=build /base-operator /usr/local/bin/base-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/base-operator", "store"]

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /base-operator /usr/local/bin/base-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/base-operator"]
