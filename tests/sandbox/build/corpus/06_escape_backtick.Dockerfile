# escape=`
FROM mcr.microsoft.com/windows/servercore:ltsc2022
WORKDIR c:\app
COPY testfile.txt c:\
RUN dir c:\ && `
    echo continued
ENV TARGET=c:\data NAME="a`"b"
