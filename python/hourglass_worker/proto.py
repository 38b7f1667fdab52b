"""The generated protobuf and gRPC modules of the worker contract.

``make generate`` writes them to ``_gen/`` beside this file with Debian's
protoc 3.21 and grpc_python_plugin (see buf.gen.yaml). protoc's Python code
imports its dependencies absolutely (``from hourglass.v1 import
generate_pb2``), so ``_gen`` goes first on ``sys.path``; its top-level
packages are ``hourglass`` and ``buf`` (protovalidate's ``validate_pb2``,
which ``generate.proto`` imports). The code loads on protobuf 4.21 (Debian
bookworm) and on newer runtimes.

Import the messages from here::

    from hourglass_worker.proto import worker_pb2, generate_pb2
"""

import os
import sys

GEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_gen")
if GEN_DIR not in sys.path:
    sys.path.insert(0, GEN_DIR)

from buf.validate import validate_pb2  # noqa: E402,F401  (generate.proto imports it)
from hourglass.v1 import generate_pb2, generate_pb2_grpc  # noqa: E402,F401
from hourglass.worker.v1 import worker_pb2, worker_pb2_grpc  # noqa: E402,F401

__all__ = ["validate_pb2", "generate_pb2", "generate_pb2_grpc", "worker_pb2", "worker_pb2_grpc", "GEN_DIR"]
