FROM alpine:3.19
# a comment before the first instruction of the stage

RUN apk add --no-cache \
        curl \
# this comment line is dropped from the continuation
        git \

        make
   RUN echo indented instruction \   
    with trailing blanks after the backslash
run echo lower-case keyword
ENV A=1 \
    B=2
