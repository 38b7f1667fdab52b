"""The generated code (make generate: protoc 3.21 + grpc_python_plugin)
imports, resolves its cross-module imports, and round-trips messages."""

import os
import unittest

from tests import helpers  # puts python/ on sys.path

import google.protobuf

from hourglass_worker import proto


class GeneratedCodeTest(unittest.TestCase):
    def test_modules_and_packages(self):
        for rel in ("hourglass/v1/generate_pb2.py", "hourglass/v1/generate_pb2_grpc.py",
                    "hourglass/worker/v1/worker_pb2.py", "hourglass/worker/v1/worker_pb2_grpc.py",
                    "buf/validate/validate_pb2.py", "hourglass/__init__.py", "buf/validate/__init__.py"):
            self.assertTrue(os.path.exists(os.path.join(proto.GEN_DIR, rel)), rel)
        self.assertTrue(proto.GEN_DIR.startswith(helpers.PYTHON_DIR))
        self.assertEqual(proto.worker_pb2.DESCRIPTOR.name, "hourglass/worker/v1/worker.proto")
        self.assertEqual([d.name for d in proto.worker_pb2.DESCRIPTOR.dependencies],
                         ["google/protobuf/timestamp.proto", "hourglass/v1/generate.proto"])
        self.assertIn("buf/validate/validate.proto", [d.name for d in proto.generate_pb2.DESCRIPTOR.dependencies])
        svc = proto.worker_pb2.DESCRIPTOR.services_by_name["WorkerService"]
        self.assertEqual([m.name for m in svc.methods], ["Run", "Describe"])
        self.assertTrue(hasattr(proto.worker_pb2_grpc, "add_WorkerServiceServicer_to_server"))
        self.assertTrue(hasattr(proto.generate_pb2_grpc, "GenerateServiceStub"))

    def test_round_trip(self):
        wp, gp = proto.worker_pb2, proto.generate_pb2
        job = wp.Job(id="j", prompt="p", styles=["a", "b"], steps=30, width=512, height=768, image_count=2,
                     seed=2**64 - 1, guidance_scale=4.5, output_format=gp.OUTPUT_FORMAT_JPEG, fault="slow=1s")
        job.deadline.GetCurrentTime()
        back = wp.RunRequest.FromString(wp.RunRequest(job=job).SerializeToString()).job
        self.assertEqual(back, job)
        ev = wp.RunResponse(image=gp.Image(data=b"\x89PNG", mime_type="image/png", seed=7, index=1))
        self.assertEqual(wp.RunResponse.FromString(ev.SerializeToString()).WhichOneof("event"), "image")
        # The validation options are there, as the Go server sees them.
        field = gp.GenerateRequest.DESCRIPTOR.fields_by_name["prompt"]
        self.assertTrue(field.GetOptions().ListFields(), "buf.validate options on GenerateRequest.prompt")

    def test_runtime_version_reported(self):
        major = int(google.protobuf.__version__.split(".")[0])
        self.assertGreaterEqual(major, 4, "protobuf runtime %s" % google.protobuf.__version__)


if __name__ == "__main__":
    unittest.main()
