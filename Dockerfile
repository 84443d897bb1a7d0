# One image for all three services; compose.yaml picks the entrypoint.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml Makefile ./
COPY protos protos
COPY libs libs
COPY services services
RUN pip install --no-cache-dir grpcio-tools mypy-protobuf \
 && python -m grpc_tools.protoc -Iprotos --python_out=libs --grpc_python_out=libs protos/nyxflow/v1/*.proto \
 && touch libs/nyxflow/v1/__init__.py \
 && pip install --no-cache-dir .
USER nobody
