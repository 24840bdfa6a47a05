ARG VERSION=1.0
ARG REGISTRY=docker.io
ARG IMAGE=${REGISTRY}/library/alpine
FROM ${IMAGE}:${VERSION} AS first
RUN echo "VERSION is empty here: $VERSION"
ARG VERSION
ARG MODE=debug OTHER
ENV MODE=${MODE}-env
ARG MODE=from-arg
LABEL version=$VERSION mode=$MODE other=${OTHER:-unset} alt=${OTHER+set}
FROM first
ARG NO_DEFAULT
ENV N=${NO_DEFAULT:-none} M=${NO_DEFAULT-dash} P=${VERSION:-no-global}
