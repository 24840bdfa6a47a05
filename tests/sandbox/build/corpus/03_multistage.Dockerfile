FROM golang:1.22 AS Build
WORKDIR /src
COPY go.mod go.sum ./
RUN go build -o /out/app ./cmd/app

FROM build AS test
RUN go test ./...

FROM alpine:3.19 AS assets
RUN mkdir /assets && touch /assets/logo.png

FROM debian:bookworm AS unused
RUN echo never needed

FROM scratch
COPY --from=BUILD /out/app /app
COPY --from=2 /assets /assets
COPY --from=nginx:latest /etc/nginx/nginx.conf /etc/nginx/
ENTRYPOINT ["/app"]
